"""Runs of the real trainer for the end-to-end tests: a tiny arithmetic dataset, a config for the
tiny model, `python -m superrl.train` under torchrun, and background runs a test can kill."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import make_arith_dataset
from dist_harness import REPO_ROOT, WORKERS_DIR, _env, torchrun_module
from superrl.weights.megatron_checkpoint import DIST_CKPT_DIR

STEPS = 3
TIMINGS = ("timing/", "perf/", "memory/", "sync/gbps", "sync/seconds")  # vary run to run


def deterministic_metrics(row: dict) -> str:
    """A metrics.jsonl row without its timings, as JSON: equal strings <=> bitwise-equal values."""
    return json.dumps({k: v for k, v in row.items() if not k.startswith(TIMINGS)})


def checkpoint_weights(checkpoint_dir, tmp_path) -> dict:
    """The model tensors of a saved trainer checkpoint (optimizer and scheduler state left out)."""
    out = tmp_path / f"{checkpoint_dir.name}.pt"
    dcp_to_torch_save(str(checkpoint_dir / DIST_CKPT_DIR), str(out))
    state = torch.load(out, weights_only=False)  # our own conversion of our own test checkpoint
    return {k: v for k, v in state.items() if not k.startswith(("optimizer", "scheduler"))
            and isinstance(v, torch.Tensor)}


def assert_runs_agree(got: tuple, want: tuple, prefixes: tuple, tol: float = 1e-6) -> None:
    """Two runs' (metrics rows, checkpoint weights): the same steps, and every metric whose key starts
    with one of `prefixes` and every weight within `tol` (sums in another order are not bitwise)."""
    (got_rows, got_weights), (want_rows, want_weights) = got, want
    assert [r["step"] for r in got_rows] == [r["step"] for r in want_rows]
    for got_row, want_row in zip(got_rows, want_rows):
        for key, value in want_row.items():
            if key.startswith(prefixes):
                assert got_row[key] == pytest.approx(value, abs=tol, rel=tol), (got_row["step"], key)
    assert got_weights.keys() == want_weights.keys()
    for name, value in want_weights.items():
        torch.testing.assert_close(got_weights[name], value, atol=tol, rtol=0, msg=name)


def make_arith_files(directory) -> None:
    """train.jsonl (64 level-1 problems) and a disjoint eval.jsonl (8) in `directory`."""
    make_arith_dataset.main(["--level", "1", "--n", "64", "--seed", "0", "--out", str(directory / "train.jsonl")])
    make_arith_dataset.main(["--level", "1", "--n", "8", "--seed", "1", "--out", str(directory / "eval.jsonl"),
                             "--exclude", str(directory / "train.jsonl")])


def write_config(path, hf_dir, data_dir, run_dir, steps=STEPS, save_every=0, eval_every=0) -> str:
    path.write_text(f"""
model: {{hf_dir: {hf_dir}}}
data: {{train_files: [{data_dir}/train.jsonl], eval_files: [{data_dir}/eval.jsonl], max_prompt_len: 64,
        prompt_template: plain}}
rollout: {{n: 4, max_tokens: 12, temperature: 1.0}}
reward: {{function: "reward_fixtures:has_digit"}}
algorithm: {{switch: {{mode: per_prompt}}, hybrid: {{weighting: hard_gate}}}}
optim: {{lr: 1.0e-3, micro_batch_size: 4}}
trainer: {{total_steps: {steps}, prompts_per_step: 4, run_dir: {run_dir}, save_every: {save_every},
          eval_every: {eval_every}, seed: 3}}
""")
    return str(path)


def train(config: str, nproc: int = 1, *overrides, timeout: float = 600) -> str:
    return torchrun_module("superrl.train", nproc, ["--config", config, *overrides], timeout=timeout)


def start_training(tmp_path, config: str, *overrides, nproc: int = 0, script: str = "") -> subprocess.Popen:
    """Start a run in the background. nproc=0: one plain process, else under torchrun; `script`:
    a tests/workers script instead of the module."""
    target = [str(WORKERS_DIR / script)] if script else ["-m", "superrl.train"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc else [sys.executable])
    return start_process(tmp_path, [*launcher, *target, "--config", config, *overrides])


def start_process(tmp_path, command: list) -> subprocess.Popen:
    """In its own process group (a test can SIGKILL all of it), output in tmp_path/run.log."""
    log = open(tmp_path / "run.log", "w")
    return subprocess.Popen(command, env=_env(str(tmp_path)), cwd=REPO_ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(condition, proc: subprocess.Popen, timeout: float = 300, what: str = "condition") -> None:
    """Poll `condition()` while the run is alive; fail naming `what` if it never holds."""
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"{what} never happened (run exit code {proc.poll()})")
        time.sleep(0.1)


def kill_run(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
