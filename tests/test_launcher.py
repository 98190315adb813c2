"""The multi-node launcher's wait for node 0's conversion is bounded: a failure marker from node 0
or CONVERT_TIMEOUT_S ends it with a clear error, instead of node 1 waiting forever."""
import os
import subprocess
import time

import pytest

from dist_harness import REPO_ROOT

LAUNCHER = REPO_ROOT / "examples" / "qwen2.5-7b_h100_multinode_launch.sh"
pytestmark = pytest.mark.usefixtures("no_leftover_processes")


@pytest.fixture
def inputs(tmp_path):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{not json")  # node 0's conversion of it fails
    for name in ("train.jsonl", "eval.jsonl"):
        (tmp_path / name).write_text("")
    return tmp_path, hf_dir


def _launch(tmp_path, hf_dir, node_rank: int, timeout_s: int) -> tuple:
    env = {**os.environ, "NODE_RANK": str(node_rank), "MASTER_ADDR": "127.0.0.1", "HF_DIR": str(hf_dir),
           "MEGATRON_DIR": str(tmp_path / "mdir"), "CONVERT_TIMEOUT_S": str(timeout_s)}
    start = time.monotonic()
    proc = subprocess.run(["bash", str(LAUNCHER), "c.yaml", str(tmp_path / "train.jsonl"),
                           str(tmp_path / "eval.jsonl")], env=env, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - start


def test_waiting_node_times_out_with_a_clear_error(inputs):
    proc, seconds = _launch(*inputs, node_rank=1, timeout_s=2)
    assert proc.returncode == 1
    assert "node 0 wrote no" in proc.stderr and "CONVERT_TIMEOUT_S=2s" in proc.stderr
    assert seconds < 30


def test_failed_conversion_on_node_0_stops_the_waiting_node(inputs):
    tmp_path, hf_dir = inputs
    node0, _ = _launch(tmp_path, hf_dir, node_rank=0, timeout_s=3600)
    assert node0.returncode != 0
    assert (tmp_path / "mdir.failed").is_file()
    node1, seconds = _launch(tmp_path, hf_dir, node_rank=1, timeout_s=3600)
    assert node1.returncode == 1 and "conversion of" in node1.stderr and "failed" in node1.stderr
    assert seconds < 30
