"""The SuperRL trainer end to end through `torchrun -m superrl.train`: parallel layouts reproduce
the single-process run, and a run killed with SIGKILL resumes to the same metrics."""
import json
import os

import pytest

from dist_harness import torchrun_module
from trainer_runs import STEPS, deterministic_metrics, kill_run, start_training, train as _train, wait_until, write_config
from superrl.trainer.metrics import read_metrics
from superrl.weights.megatron_checkpoint import METADATA_FILE

COMPARED = ("loss/", "reward/", "switch/", "actor/")


def _compared(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith(COMPARED)}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_llama, arith_files):
    d = tmp_path_factory.mktemp("tp1")
    config = write_config(d / "c.yaml", tiny_llama, arith_files, d / "run", steps=4, save_every=2, eval_every=2)
    _train(config)
    return config, read_metrics(str(d / "run"))


def test_reference_run_mixes_pg_and_sft(reference_run):
    _, rows = reference_run
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("reward/mean", "reward/success_rate", "switch/sft_fraction", "loss/pg", "loss/sft",
                "actor/entropy", "actor/kl", "timing/step_s", "perf/tokens_per_s"):
        assert key in rows[0], key
    fractions = [r["switch/sft_fraction"] for r in rows]
    assert any(0 < f < 1 for f in fractions), f"want steps with both PG and SFT prompts, got {fractions}"
    assert "eval/accuracy" in rows[1]


@pytest.mark.parametrize("nproc,layout", [(2, ["parallel.tp=2"]), (2, ["parallel.pp=2"]), (2, [])],
                         ids=["tp2", "pp2", "dp2"])
def test_parallel_layout_reproduces_tp1(tmp_path, tiny_llama, arith_files, reference_run, nproc, layout):
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run")
    _train(config, nproc, *layout)
    rows = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in rows] == [r["step"] for r in reference_run[1][:STEPS]]
    for got, want in zip(rows, reference_run[1][:STEPS]):
        for key, value in _compared(want).items():
            assert got[key] == pytest.approx(value, abs=1e-4), (got["step"], key)


@pytest.mark.usefixtures("no_leftover_processes")
def test_kill_9_after_checkpoint_then_resume_is_bitwise(tmp_path, tiny_llama, arith_files, reference_run):
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run", steps=4,
                          save_every=2, eval_every=2)
    proc = start_training(tmp_path, config)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_2" / METADATA_FILE
    wait_until(checkpoint.exists, proc, what="the step-2 checkpoint")
    kill_run(proc)
    _train(config, 1, "trainer.resume=true")
    resumed = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in resumed] == [r["step"] for r in reference_run[1]] == [1, 2, 3, 4]
    for got, want in zip(resumed, reference_run[1]):
        assert deterministic_metrics(got) == deterministic_metrics(want), got["step"]


def test_eval_cli_reproduces_in_run_eval(reference_run):
    """`python -m superrl.eval` on the step-4 checkpoint scores what the run itself scored at step 4."""
    config, rows = reference_run
    run_dir = os.path.join(os.path.dirname(config), "run")
    output = torchrun_module("superrl.eval", 1, ["--config", config, "--checkpoint",
                                                 os.path.join(run_dir, "checkpoints", "step_4")])
    with open(os.path.join(run_dir, "eval", "step_4.json")) as f:
        result = json.load(f)
    assert "eval/arith_l1/accuracy=" in output
    assert result["eval/accuracy"] == rows[3]["eval/accuracy"]
    assert result["eval/arith_l1/accuracy"] == rows[3]["eval/arith_l1/accuracy"]
