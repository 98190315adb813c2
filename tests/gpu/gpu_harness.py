"""Launch torchrun worlds that see the GPUs (tests/dist_harness.py hides them: its worlds are CPU)."""
import os
import signal
import subprocess
import sys
import tempfile

import pytest
import torch

from dist_harness import REPO_ROOT, WORKERS_DIR, _check, _collect, _env

TIMEOUT_S = 300


def needs_gpus(count: int):
    return pytest.mark.skipif(torch.cuda.device_count() < count, reason=f"needs {count} CUDA devices")


def gpu_env(result_dir: str) -> dict:
    env = _env(result_dir)
    env.pop("CUDA_VISIBLE_DEVICES")
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # the caller's choice of devices, not dist_harness's ""
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def torchrun_on_gpus(nproc: int, target: list, result_dir: str, timeout: float = TIMEOUT_S) -> str:
    """`torchrun --standalone --nproc-per-node nproc target...`; its whole process group is killed
    if it runs past `timeout`, so no rank outlives the test."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           *[str(a) for a in target]]
    proc = subprocess.Popen(cmd, env=gpu_env(result_dir), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun ran past {timeout} s:\n{out[-8000:]}")
    _check([(proc.returncode, out)])
    return out


def train_on_gpus(config: str, nproc: int, *overrides) -> str:
    """`python -m superrl.train` as users run it, on `nproc` GPUs."""
    return torchrun_on_gpus(nproc, ["-m", "superrl.train", "--config", config, *overrides],
                            tempfile.gettempdir())


def run_worker_on_gpus(script: str, nproc: int, args=()) -> list:
    """A tests/workers script on `nproc` GPUs; its per-rank results."""
    with tempfile.TemporaryDirectory() as result_dir:
        torchrun_on_gpus(nproc, [WORKERS_DIR / script, *args], result_dir)
        return _collect(result_dir, nproc)
