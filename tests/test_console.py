"""A clean console: each known upstream warning is filtered only where it comes from (the
messages are the ones megatron-core 0.16.1 and torch 2.13 print), ranks other than 0 print errors
only, and a TP2 training run's stderr holds nothing but the rank-0 progress bar."""
import os
import re
import signal
import subprocess
import sys
import warnings

import pytest

from dist_harness import REPO_ROOT, _env
from trainer_runs import write_config
from superrl import console

# (text, module) as upstream emits them, one per entry of console.KNOWN_WARNINGS
UPSTREAM = [
    ("Transformer Engine and Apex are not installed. Falling back to Torch optimizers.", "megatron.core.optimizer"),
    ("Transformer Engine and Apex are not installed. Falling back to local implementations of "
     "multi_tensor_applier and multi_tensor_scale", "megatron.core.distributed.fsdp.src.megatron_fsdp.mixed_precision"),
    ("Apex is not installed. Falling back to Torch Norm", "megatron.core.models.gpt.gpt_layer_specs"),
    ("full scope is deprecated. Use empty cuda_graph_scope to capture the whole layer.",
     "megatron.core.transformer.transformer_config"),
    ("The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. Its .grad attribute won't be "
     "populated during autograd.backward().", "megatron.core.optimizer.optimizer"),
    ("`torch.distributed.reduce_scatter_tensor` is deprecated. Please use `torch.distributed.reduce_scatter_single` "
     "instead.", "torch.distributed.c10d_logger"),
    ("`torch.distributed.all_gather_into_tensor` is deprecated. Please use `torch.distributed.all_gather_single` "
     "instead.", "torch.distributed.c10d_logger"),
    ("`load_state_dict` is deprecated and will be removed in future versions. Please use `load` instead.",
     "megatron.core.dist_checkpointing.strategies.torch"),
    ("Please use DTensor instead and we are deprecating ShardedTensor.", "torch.distributed.checkpoint.planner_helpers"),
]


def _shown(text: str, module: str) -> bool:
    """Whether a warning from `module` reaches the console once console.install() has run."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # drop pytest's own filters (pytest.ini ignores megatron's warnings)
        warnings.simplefilter("always")
        console.install()
        warnings.warn_explicit(text, UserWarning, "upstream.py", 1, module=module)
    return bool(caught)


@pytest.mark.parametrize("text,module", UPSTREAM, ids=[m for _, m in UPSTREAM])
def test_known_warning_is_filtered_from_its_module_only(text, module, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert not _shown(text, module)
    assert _shown(text, "superrl.trainer.loop")  # the same words from our code still show


def test_every_filter_entry_is_exercised_and_has_a_reason():
    for known in console.KNOWN_WARNINGS:
        assert known.reason, known.message
        assert any(re.match(known.message, text, re.I) and re.match(known.module, module)
                   for text, module in UPSTREAM), known.message


def test_other_warnings_still_show_on_rank_0(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert _shown("something new from megatron", "megatron.core.optimizer")


RANK_SCRIPT = """
import logging, warnings
from superrl import console
console.install()
import transformers
warnings.warn("a warning")
logging.getLogger("megatron.core").warning("a log warning")
transformers.logging.get_logger("transformers.x").warning("a transformers warning")
logging.getLogger("megatron.core").error("a log error")
raise RuntimeError("boom")
"""


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_0_prints_below_errors_and_every_rank_prints_tracebacks(rank, tmp_path):
    env = {**_env(str(tmp_path)), "RANK": rank}
    for variable in ("TRANSFORMERS_VERBOSITY", "TORCH_CPP_LOG_LEVEL"):
        env.pop(variable, None)
    proc = subprocess.run([sys.executable, "-c", RANK_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "a log error" in proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: boom" in proc.stderr
    below_errors = ("a warning", "a log warning", "a transformers warning")
    assert [text in proc.stderr for text in below_errors] == [rank == "0"] * 3, proc.stderr


# what a clean TP2 run may print on stderr: tqdm renders of the bar, and torchrun's own notice
ALLOWED = [re.compile(p) for p in (r"superrl: +\d+%\|.*\| \d+/\d+ \[.*\]$", r"\*+$",
                                   r"Setting OMP_NUM_THREADS environment variable for each process")]
POSTFIX = re.compile(r"reward=\d\.\d{3}, success=\d\.\d{2}, sft=\d\.\d{2}, s/step=\d+\.\d{2}\]$")


def _torchrun_stderr(tmp_path, config: str, *overrides, timeout: float = 600) -> str:
    """stderr of `torchrun --nproc-per-node 2 -m superrl.train`, kept apart from stdout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "superrl.train", "--config", config, "parallel.tp=2", *overrides]
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(command, env=_env(str(tmp_path)), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        try:
            assert proc.wait(timeout=timeout) == 0, (tmp_path / "stderr.txt").read_text()[-8000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        err.seek(0)
        return err.read()


def _check_clean(stderr: str, start: int, total: int) -> None:
    lines = [line.rstrip() for line in re.split(r"[\r\n]", stderr) if line.strip()]
    unexpected = [line for line in lines if not any(p.match(line) for p in ALLOWED)]
    assert not unexpected, "stderr lines outside the allowed set:\n" + "\n".join(unexpected[:20])
    first_renders = [line for line in lines if f"| {start}/{total} [" in line]
    assert len(first_renders) == 1, f"want one progress bar (rank 0), got {len(first_renders)}"
    assert POSTFIX.search(lines[-1]), lines[-1]


@pytest.mark.usefixtures("no_leftover_processes")
def test_tp2_training_and_resume_print_only_the_rank_0_bar(tmp_path, tiny_llama, arith_files):
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run", steps=2, eval_every=2)
    _check_clean(_torchrun_stderr(tmp_path, config), start=0, total=2)
    # a resumed run loads the step-2 checkpoint: megatron's dist-checkpointing load path
    _check_clean(_torchrun_stderr(tmp_path, config, "trainer.resume=true", "trainer.total_steps=3"), start=2, total=3)
