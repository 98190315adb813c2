"""Soak: 200 steps of the quickstart-sized model with periodic checkpoints and one kill -9 + resume.
Nothing is lost (every step logged once, resumed steps replay the crashed run's) and the resident
memory stays flat in both processes (no leak per step)."""
import json
import statistics

import pytest

import make_tiny_model
from trainer_runs import deterministic_metrics, kill_run, make_arith_files, start_training, wait_until, write_config
from superrl.trainer.checkpoint import complete_checkpoints
from superrl.trainer.metrics import read_metrics

pytestmark = [pytest.mark.timeout(1500), pytest.mark.usefixtures("no_leftover_processes")]
STEPS, SAVE_EVERY, CRASH_AFTER = 200, 25, 110
WARMUP = 20  # allocator and caches settle in the first steps of each process


def _rss_growth(rows: list) -> dict:
    """Median RSS of the 20 steps after warm-up vs of the process's last 20 steps."""
    early = statistics.median(r["memory/rss_mb"] for r in rows[WARMUP:WARMUP + 20])
    late = statistics.median(r["memory/rss_mb"] for r in rows[-20:])
    return {"steps": [rows[0]["step"], rows[-1]["step"]], "early_mb": early, "late_mb": late,
            "growth_mb": late - early}


def test_soak_200_steps_with_crash_and_resume(tmp_path):
    model, data = tmp_path / "model", tmp_path / "data"
    make_tiny_model.main(["--arch", "llama", "--out-dir", str(model), "--hidden", "128", "--layers", "2",
                          "--heads", "4", "--kv-heads", "2", "--vocab", "512", "--seed", "0"])
    data.mkdir()
    make_arith_files(data)
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", model, data, run, steps=STEPS, save_every=SAVE_EVERY)
    overrides = ("trainer.keep_last=2",)

    first = start_training(tmp_path, config, *overrides)
    wait_until(lambda: (run / "metrics.jsonl").exists() and len(read_metrics(str(run))) >= CRASH_AFTER,
               first, timeout=1200, what=f"step {CRASH_AFTER}")
    kill_run(first)
    before_crash = read_metrics(str(run))
    resumed_from = int(complete_checkpoints(str(run))[-1].rsplit("_", 1)[1])

    second = start_training(tmp_path, config, *overrides, "trainer.resume=true")
    assert second.wait(timeout=1200) == 0, (tmp_path / "run.log").read_text()[-3000:]
    rows = read_metrics(str(run))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for got, want in zip(rows[resumed_from:], before_crash[resumed_from:]):
        assert deterministic_metrics(got) == deterministic_metrics(want), got["step"]

    report = {"first_process": _rss_growth(before_crash), "resumed_process": _rss_growth(rows[resumed_from:])}
    print("soak RSS:", json.dumps(report))
    for part in report.values():
        assert part["growth_mb"] < 0.05 * part["early_mb"], report
