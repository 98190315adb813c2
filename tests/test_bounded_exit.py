"""When one rank stops taking part, every other rank exits non-zero within trainer.dist_timeout_s
plus a small margin, also without torchrun's agent to kill it (ranks started one by one, as srun or
a Kubernetes job starts them). Measured, not assumed: megatron's own TP/PP/DP groups used to wait
30 minutes, whatever trainer.dist_timeout_s said."""
import signal
import subprocess
import sys
import time

import pytest

from dist_harness import REPO_ROOT, _env, free_port
from trainer_runs import make_arith_files, write_config
from superrl.trainer.metrics import read_metrics

TIMEOUT_S = 10
MARGIN_S = 15
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_leftover_processes")]


def _start_ranks(tmp_path, config: str, world: int) -> list:
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**_env(str(tmp_path)), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "superrl.train", "--config", config, f"parallel.tp={world}",
             f"trainer.dist_timeout_s={TIMEOUT_S}"], env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT))
    return procs


@pytest.mark.parametrize("fault, failing_rank", [("hang", 1), ("kill_9", 1), ("kill_9", 0)],
                         ids=["hang", "kill_9", "kill_9_of_the_rank_with_engine_and_reward_workers"])
def test_survivor_exits_within_dist_timeout(tmp_path, tiny_llama, fault, failing_rank):
    """The fixture also checks that the killed rank's helpers (reward workers) went with it."""
    make_arith_files(tmp_path)
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_llama, tmp_path, run, steps=500)
    ranks = _start_ranks(tmp_path, config, 2)
    failing, survivor = ranks[failing_rank], ranks[1 - failing_rank]
    try:
        deadline = time.monotonic() + 180
        while not ((run / "metrics.jsonl").exists() and len(read_metrics(str(run))) >= 3):
            assert survivor.poll() is None and time.monotonic() < deadline, "the run never reached step 3"
            time.sleep(0.1)
        failing.send_signal(signal.SIGSTOP if fault == "hang" else signal.SIGKILL)
        start = time.monotonic()
        code = survivor.wait(timeout=TIMEOUT_S + MARGIN_S)
        seconds = time.monotonic() - start
    finally:
        for proc in (survivor, failing):
            proc.kill()
            proc.wait()
    print(f"{fault}: survivor exited {code} after {seconds:.1f}s (trainer.dist_timeout_s={TIMEOUT_S})")
    assert code != 0
    log = (tmp_path / f"rank{1 - failing_rank}.log").read_text()
    assert ("Timed out" if fault == "hang" else "Connection") in log, log[-2000:]


BOUNDED_BLOCK = """
import time
from superrl.trainer.engine_setup import bounded
with bounded({limit}, "the test block"):
    time.sleep({sleep})
print("after the block")
time.sleep({after})
"""


def _run_bounded(limit: float, sleep: float, after: float = 0.0) -> tuple:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", BOUNDED_BLOCK.format(limit=limit, sleep=sleep, after=after)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


def test_bounded_block_that_outlasts_its_limit_ends_the_process_with_stacks():
    """What guards vLLM's collective start-up and teardown (engine_setup.build_engine)."""
    proc, seconds = _run_bounded(limit=1, sleep=30)
    assert proc.returncode == 1 and seconds < 20, (proc.returncode, seconds)
    assert "superrl: the test block did not finish within 1 s" in proc.stderr
    assert "time.sleep" in proc.stderr or "<string>" in proc.stderr, proc.stderr  # the stacks
    assert "after the block" not in proc.stdout


def test_bounded_block_that_finishes_in_time_cancels_its_timer():
    proc, _ = _run_bounded(limit=1, sleep=0, after=2)  # outlives the limit after the block
    assert proc.returncode == 0, proc.stderr
    assert "after the block" in proc.stdout and "did not finish" not in proc.stderr
