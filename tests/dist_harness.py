"""Launch real `torchrun` gloo worlds from pytest and collect one JSON result per rank.

Worker scripts (tests/workers/*.py) call `write_result(obj)` on each rank; the launching test
gets the list of per-rank objects ordered by global rank.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
WORKERS_DIR = TESTS_DIR / "workers"
_RESULT_DIR_ENV = "SUPERRL_TEST_RESULT_DIR"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(result_dir: str) -> dict:
    env = dict(os.environ)
    env[_RESULT_DIR_ENV] = result_dir
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _collect(result_dir: str, world_size: int) -> list:
    results = []
    for rank in range(world_size):
        path = Path(result_dir) / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no result ({path})"
        results.append(json.loads(path.read_text()))
    return results


def _script_cmd(script: str, args) -> list:
    path = Path(script)
    if not path.is_absolute():
        path = WORKERS_DIR / path
    return [str(path), *[str(a) for a in args]]


def _check(proc_outputs):
    for rc, out in proc_outputs:
        if rc != 0:
            # Worker tracebacks come first; torchrun's own summary trails them.
            lines = [ln for ln in out.splitlines() if "warn" not in ln.lower()]
            raise AssertionError(f"torchrun exited {rc}:\n" + "\n".join(lines)[-8000:])


def _run_all(cmds: list, env: dict, timeout: float, cwd=REPO_ROOT) -> list:
    """Run the commands side by side; (return code, output) of each. Each runs in a session of its
    own, so a time-out kills the whole process tree (torchrun and its ranks), not only torchrun."""
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=cwd, start_new_session=True) for cmd in cmds]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append((proc.returncode, out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return outputs


def torchrun_module(module: str, nproc: int, args=(), timeout: float = 600, cwd=REPO_ROOT) -> str:
    """Run `torchrun --standalone --nproc-per-node nproc -m module args...` as users do; return output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", module, *[str(a) for a in args]]
    outputs = _run_all([cmd], _env(tempfile.gettempdir()), timeout, cwd)
    _check(outputs)
    return outputs[0][1]


def run_torchrun(script: str, nproc: int, args=(), timeout: float = 600) -> list:
    """Run `torchrun --standalone --nproc-per-node nproc script args...`; return per-rank results."""
    with tempfile.TemporaryDirectory() as result_dir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", *_script_cmd(script, args)]
        _check(_run_all([cmd], _env(result_dir), timeout))
        return _collect(result_dir, nproc)


def run_torchrun_multinode(script: str, nnodes: int, nproc_per_node: int, args=(),
                           timeout: float = 600) -> list:
    """Simulate a multi-node launch on one box: one torchrun per node, c10d rendezvous on 127.0.0.1.

    This is the exact form users copy for real clusters (see examples/*multinode*.sh).
    """
    port = free_port()
    with tempfile.TemporaryDirectory() as result_dir:
        cmds = [[sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
                 f"--node-rank={node_rank}", f"--nproc-per-node={nproc_per_node}",
                 "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=superrl-test",
                 *_script_cmd(script, args)] for node_rank in range(nnodes)]
        _check(_run_all(cmds, _env(result_dir), timeout))
        return _collect(result_dir, nnodes * nproc_per_node)


def write_result(obj) -> None:
    """Called inside a worker: store this rank's JSON-serialisable result for the launcher."""
    rank = int(os.environ.get("RANK", "0"))
    result_dir = os.environ[_RESULT_DIR_ENV]
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(obj))
