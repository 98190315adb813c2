"""Preemption on the real trainer at TP2: SIGTERM mid-run, sent to every rank or to the torchrun
launcher alone, gives a checkpoint of the last completed step, an exit within
trainer.preemption_grace_s, and a resume equal bit for bit to the uninterrupted run."""
import signal
import time

import psutil
import pytest

from reward_fixtures import SIGTERM_FILE_ENV
from trainer_runs import deterministic_metrics, start_training, train, wait_until, write_config
from superrl.trainer.checkpoint import complete_checkpoints
from superrl.trainer.metrics import read_metrics

STEPS = 6
TP2 = ("parallel.tp=2",)
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("no_leftover_processes")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama, arith_files):
    d = tmp_path_factory.mktemp("uninterrupted")
    train(write_config(d / "c.yaml", tiny_llama, arith_files, d / "run", steps=STEPS), 2, *TP2)
    return read_metrics(str(d / "run"))


def _start(tmp_path, tiny_llama, arith_files, *overrides):
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, run, steps=STEPS)
    proc = start_training(tmp_path, config, *TP2, *overrides, nproc=2)
    wait_until(lambda: (run / "metrics.jsonl").exists() and len(read_metrics(str(run))) >= 2, proc,
               what="step 2")
    return run, config, proc


def _check_preempted_then_resume(tmp_path, run, config, uninterrupted, seconds: float, grace_s: float) -> list:
    """The checkpoint is the last completed step's, the exit came within the grace, and a resume
    reproduces the uninterrupted run; returns the preempted run's log and its number of steps."""
    log = (tmp_path / "run.log").read_text()
    assert "superrl: preempted: saved" in log, log[-3000:]
    assert seconds < grace_s + 10, f"exit took {seconds:.1f}s"
    logged = read_metrics(str(run))
    assert 2 <= len(logged) < STEPS, "the signal came mid-run"
    newest = complete_checkpoints(str(run))[-1]
    assert newest.endswith(f"step_{len(logged)}"), (newest, len(logged))  # the last completed step
    print(f"preempted after step {len(logged)}; every process gone {seconds:.1f}s after SIGTERM")

    train(config, 2, *TP2, "trainer.resume=true")
    resumed = read_metrics(str(run))
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted] == list(range(1, STEPS + 1))
    for got, want in zip(resumed, uninterrupted):
        assert deterministic_metrics(got) == deterministic_metrics(want), got["step"]
    return log, len(logged)


def test_sigterm_to_every_rank_finishes_the_step_saves_and_resumes_bitwise(tmp_path, tiny_llama, arith_files,
                                                                           uninterrupted):
    """A grace far above a step: the step in flight finishes, then the ranks save and exit 75."""
    run, config, proc = _start(tmp_path, tiny_llama, arith_files, "trainer.preemption_grace_s=20")
    start = time.monotonic()
    for rank in psutil.Process(proc.pid).children():  # torchrun's agent starts one process per rank
        rank.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    log, _ = _check_preempted_then_resume(tmp_path, run, config, uninterrupted, time.monotonic() - start, 20)
    assert "exitcode  : 75" in log  # the ranks' own exit code, in torchrun's failure report
    assert "dropped" not in log


def test_sigterm_to_the_launcher_mid_rollout_drops_the_step_that_would_not_fit(tmp_path, tiny_llama, arith_files,
                                                                             uninterrupted, monkeypatch):
    """torchrun forwards the launcher's SIGTERM to the ranks; a reward call sends it while the
    ranks are in a rollout, and a grace shorter than any update drops that step."""
    request = tmp_path / "sigterm_pid"
    monkeypatch.setenv(SIGTERM_FILE_ENV, str(request))
    run, config, proc = _start(tmp_path, tiny_llama, arith_files, "trainer.preemption_grace_s=0.001",
                               "reward.function=reward_fixtures:sigterm_when_asked")
    (tmp_path / "pid.tmp").write_text(str(proc.pid))
    start = time.monotonic()
    (tmp_path / "pid.tmp").rename(request)  # atomically: a reward call never reads half a pid
    assert proc.wait(timeout=120) != 0
    # measured from the request: the next reward call (1 s stall) sends the signal
    log, completed = _check_preempted_then_resume(tmp_path, run, config, uninterrupted, time.monotonic() - start,
                                                  grace_s=1.0)
    assert f"step {completed + 1} would not have ended in time: dropped" in log, log[-2000:]
