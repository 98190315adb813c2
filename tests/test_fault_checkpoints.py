"""Faults around training state, on the real trainer: NaN/Inf steps, damaged or foreign checkpoints,
kill -9 during a checkpoint write or of one rank mid-step, and a full disk."""
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
import zlib

import pytest
import torch

import make_tiny_model
from process_tree import TAG_ENV, tagged_processes
from trainer_runs import (checkpoint_weights, deterministic_metrics, kill_run, start_process, start_training,
                          train, wait_until, write_config)
from superrl.trainer.metrics import read_metrics
from superrl.weights.megatron_checkpoint import DIST_CKPT_DIR, METADATA_FILE

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("no_leftover_processes")]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tiny_llama, arith_files):
    """4 steps, a checkpoint after each: the uninterrupted reference and a source of checkpoints."""
    d = tmp_path_factory.mktemp("saved")
    config = write_config(d / "c.yaml", tiny_llama, arith_files, d / "run", steps=4, save_every=1)
    train(config, 1, "trainer.keep_last=4")
    return d / "run", read_metrics(str(d / "run"))


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run_log(tmp_path) -> str:
    return (tmp_path / "run.log").read_text()


def _copy_run(saved_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_run[0], run)
    return run


# ---- NaN / Inf ----------------------------------------------------------------------------------
def test_nan_steps_are_skipped_then_consecutive_ones_stop_the_run(tmp_path, tiny_llama, arith_files,
                                                                  monkeypatch):
    """NaN at step 2 (alone) and at steps 4-6 (three in a row, the limit): step 2 leaves weights
    as step 1 made them, the run goes on, then stops after step 6 with a checkpoint of step 3's
    weights; resuming without the fault finishes the run."""
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run", steps=7, save_every=1)
    overrides = ("trainer.keep_last=10", "trainer.max_consecutive_bad_steps=3")
    monkeypatch.setenv("SUPERRL_TEST_NAN_STEPS", "2,4,5,6")
    proc = start_training(tmp_path, config, *overrides, script="train_with_nan.py")
    assert proc.wait(timeout=600) != 0
    log = _run_log(tmp_path)
    assert "steps 4-6: 3 consecutive steps had NaN/Inf loss or gradients" in log, log[-3000:]
    assert "(step 3) are saved in" in log

    rows = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["train/step_skipped"] for r in rows] == [0, 1, 0, 1, 1, 1]
    assert [r["train/skipped_steps_total"] for r in rows] == [0, 1, 1, 2, 3, 4]
    ckpt = {s: checkpoint_weights(tmp_path / "run" / "checkpoints" / f"step_{s}", tmp_path) for s in (1, 2, 3, 6)}
    assert _same_weights(ckpt[1], ckpt[2]), "a skipped step changed the weights"
    assert not _same_weights(ckpt[2], ckpt[3]), "step 3 should have trained"
    assert _same_weights(ckpt[3], ckpt[6]), "the stop checkpoint is not the last good weights"
    for value in ckpt[6].values():
        assert torch.isfinite(value).all()

    train(config, 1, *overrides, "trainer.resume=true")
    rows = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[-1]["train/step_skipped"] == 0 and rows[-1]["train/skipped_steps_total"] == 4


# ---- damaged or foreign checkpoints ------------------------------------------------------------
def _distcp_file(checkpoint_dir):
    return sorted((checkpoint_dir / DIST_CKPT_DIR).glob("*.distcp"))[0]


def test_resume_from_truncated_checkpoint_names_the_file(tmp_path, saved_run, tiny_llama, arith_files):
    run = _copy_run(saved_run, tmp_path)
    damaged = _distcp_file(run / "checkpoints" / "step_4")
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, run, steps=5)
    proc = start_training(tmp_path, config, f"trainer.resume_from={run / 'checkpoints' / 'step_4'}")
    assert proc.wait(timeout=300) != 0
    assert f"{damaged}: " in _run_log(tmp_path) and "truncated or overwritten" in _run_log(tmp_path)


def test_resume_latest_falls_back_past_damaged_checkpoints(tmp_path, saved_run, tiny_llama, arith_files):
    """step_4's metadata is not JSON, step_3 has a flipped byte: resume=true skips both, says why,
    and resumes from step_2 to the same metrics as the uninterrupted run."""
    run = _copy_run(saved_run, tmp_path)
    (run / "checkpoints" / "step_4" / METADATA_FILE).write_text('{"format": "superrl-meg')
    flipped = _distcp_file(run / "checkpoints" / "step_3")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, run, steps=4)
    proc = start_training(tmp_path, config, "trainer.resume=true")
    assert proc.wait(timeout=300) == 0, _run_log(tmp_path)[-3000:]
    log = _run_log(tmp_path)
    assert f"step_4/{METADATA_FILE}: not valid JSON" in log, log[-3000:]
    assert f"{flipped}: CRC-32" in log and "(corrupted)" in log
    rows = read_metrics(str(run))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for got, want in zip(rows, saved_run[1]):
        assert deterministic_metrics(got) == deterministic_metrics(want), got["step"]


def test_checkpoint_of_another_model_is_refused_by_name(tmp_path, saved_run, arith_files):
    run = _copy_run(saved_run, tmp_path)
    other = tmp_path / "other_model"
    make_tiny_model.main(["--arch", "llama", "--out-dir", str(other), "--hidden", "32", "--layers", "2",
                          "--heads", "4", "--kv-heads", "2", "--vocab", "512", "--seed", "1"])
    config = write_config(tmp_path / "c.yaml", other, arith_files, run, steps=5)
    proc = start_training(tmp_path, config, "trainer.resume=true")
    assert proc.wait(timeout=300) != 0
    log = _run_log(tmp_path)
    assert "no loadable checkpoint to resume from" in log
    assert "is from a different model (hidden_size: 64 in the checkpoint, 32 here" in log, log[-3000:]


# ---- kill -9 -----------------------------------------------------------------------------------
def test_kill_9_during_checkpoint_write_keeps_the_previous_one(tmp_path, saved_run, tiny_llama, arith_files):
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, run, steps=4, save_every=1)
    proc = start_training(tmp_path, config, "trainer.keep_last=4")
    wait_until((run / "checkpoints" / ".tmp_step_2" / "trainer").exists, proc, what="the step-2 checkpoint write")
    kill_run(proc)
    assert (run / "checkpoints" / "step_1" / METADATA_FILE).exists()

    train(config, 1, "trainer.keep_last=4", "trainer.resume=true")
    rows = read_metrics(str(run))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for got, want in zip(rows, saved_run[1]):
        assert deterministic_metrics(got) == deterministic_metrics(want), got["step"]
    assert not list((run / "checkpoints").glob(".tmp_*")), "the partial checkpoint was not cleaned up"


def test_kill_9_of_one_rank_mid_step_ends_the_job_and_resume_replays(tmp_path, saved_run, tiny_llama, arith_files):
    """TP2: rank 1 is killed during step 3 (after the step-2 checkpoint); torchrun ends the job
    (non-zero, promptly), and the resumed run recomputes step 3 exactly as logged before the crash."""
    import psutil

    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, run, steps=4, save_every=2)
    layout = ("parallel.tp=2", "trainer.dist_timeout_s=60")
    proc = start_training(tmp_path, config, *layout, nproc=2)
    wait_until(lambda: (run / "metrics.jsonl").exists() and len(read_metrics(str(run))) >= 3, proc,
               what="step 3")
    before_crash = read_metrics(str(run))
    workers = psutil.Process(proc.pid).children()  # torchrun's agent starts one process per rank
    rank1 = next(p for p in workers if p.environ().get("RANK") == "1")
    rank1.kill()
    start = time.monotonic()
    try:
        proc.wait(timeout=60 + 15)  # trainer.dist_timeout_s + 15 s
    except subprocess.TimeoutExpired:
        kill_run(proc)
        pytest.fail("the job did not end within trainer.dist_timeout_s + 15 s of losing a rank")
    assert proc.returncode != 0
    while tagged_processes(os.environ[TAG_ENV]) and time.monotonic() - start < 60 + 15:
        time.sleep(0.1)
    print(f"kill -9 of rank 1: every process of the job gone after {time.monotonic() - start:.1f}s")
    assert not tagged_processes(os.environ[TAG_ENV])

    train(config, 2, *layout, "trainer.resume=true")
    rows = read_metrics(str(run))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for got, want in zip(rows, before_crash):
        assert deterministic_metrics(got) == deterministic_metrics(want), got["step"]


# ---- disk full ---------------------------------------------------------------------------------
def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(shutil.which("unshare") is None or not _can_mount_tmpfs(),
                    reason="needs `unshare -rm` (user + mount namespaces) to mount a small tmpfs")
def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, saved_run, tiny_llama, arith_files):
    """checkpoints/ on a tmpfs with room for 1.5 checkpoints: step 2's save fails with a clear error,
    its partial directory is removed, step 1 stays complete and a resume from it finishes the run."""
    one_checkpoint = sum(f.stat().st_size for f in (saved_run[0] / "checkpoints" / "step_1").rglob("*") if f.is_file())
    run, kept = tmp_path / "run", tmp_path / "kept"
    (run / "checkpoints").mkdir(parents=True)
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, run, steps=3, save_every=1)
    script = (f"mount -t tmpfs -o size={int(one_checkpoint * 1.5) // 1024}k tmpfs {run}/checkpoints && "
              f"{sys.executable} -m superrl.train --config {config} trainer.keep_last=4; rc=$?; "
              f"cp -a {run}/checkpoints {kept}; exit $rc")
    proc = start_process(tmp_path, ["unshare", "-rm", "bash", "-c", script])
    assert proc.wait(timeout=300) != 0
    log = _run_log(tmp_path)
    full = re.search(r"writing checkpoint '\S+/step_2' failed with (\S+) MiB of (\S+) MiB free", log)
    assert full and float(full[1]) < 0.1 * float(full[2]), log[-3000:]
    assert f"last complete checkpoint: {run}/checkpoints/step_1" in log
    assert sorted(p.name for p in kept.iterdir()) == ["step_1"]

    train(config, 1, f"trainer.resume_from={kept / 'step_1'}", f"trainer.run_dir={tmp_path / 'resumed'}")
    assert [r["step"] for r in read_metrics(str(tmp_path / "resumed"))] == [2, 3]


# ---- no code execution from checkpoint files --------------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _replace_consistently(checkpoint_dir, relative: str, payload: bytes) -> None:
    """Swap a file and update the manifest to match: a crafted checkpoint, not a damaged one."""
    (checkpoint_dir / relative).write_bytes(payload)
    meta_path = checkpoint_dir / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["files"][relative] = {"bytes": len(payload), "crc32": f"{zlib.crc32(payload):08x}"}
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("relative", [f"{DIST_CKPT_DIR}/.metadata", f"{DIST_CKPT_DIR}/common.pt",
                                      "trainer/rank_00000.pt"])
def test_checkpoint_files_that_would_run_code_are_refused(tmp_path, saved_run, tiny_llama, arith_files, relative):
    run = _copy_run(saved_run, tmp_path)
    marker = tmp_path / "code_ran"
    buffer = io.BytesIO()
    if relative.endswith(".metadata"):
        pickle.dump(_RunsCode(marker), buffer)
    else:
        torch.save({"state": _RunsCode(marker)}, buffer)
    checkpoint = run / "checkpoints" / "step_4"
    _replace_consistently(checkpoint, relative, buffer.getvalue())
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, run, steps=5)
    proc = start_training(tmp_path, config, f"trainer.resume_from={checkpoint}")
    assert proc.wait(timeout=300) != 0
    assert not marker.exists(), "loading the checkpoint ran code"
    log = _run_log(tmp_path)
    assert f"{checkpoint / relative}: refus" in log, log[-3000:]
