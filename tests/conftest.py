import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))
sys.path.insert(0, str(TESTS_DIR.parent / "tools"))


def _make_tiny(tmp_path_factory, arch: str, *extra) -> str:
    import make_tiny_model

    out = tmp_path_factory.mktemp(f"tiny_{arch}") / "model"
    make_tiny_model.main(["--arch", arch, "--out-dir", str(out), *extra])
    return str(out)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """Llama-style: tied embeddings, GQA (4 heads, 2 KV heads), hidden 64, 2 layers, vocab 512."""
    return _make_tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def arith_files(tmp_path_factory):
    """train.jsonl (64 level-1 arithmetic problems) and a disjoint eval.jsonl (8), shared by the
    end-to-end trainer tests."""
    from trainer_runs import make_arith_files

    d = tmp_path_factory.mktemp("arith")
    make_arith_files(d)
    return d


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    """Qwen2-style: qkv bias, untied embeddings, GQA, hidden 64, 2 layers, vocab 512."""
    return _make_tiny(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> str:
    """Qwen3-style: per-head q/k RMSNorm (random weights), no qkv bias, explicit head_dim 32 (not
    hidden / heads = 16), untied embeddings, GQA, hidden 64, 2 layers, vocab 512."""
    return _make_tiny(tmp_path_factory, "qwen3", "--head-dim", "32")


@pytest.fixture(scope="session")
def tiny_llama3_rope(tmp_path_factory) -> str:
    """tiny_llama's weights with Llama 3.1 RoPE scaling (factor 8) over an original context of 16
    positions, so the scaling changes every sequence the tests run."""
    return _make_tiny(tmp_path_factory, "llama", "--rope-scaling", "llama3", "--rope-original-max-positions", "16")


@pytest.fixture(scope="session")
def tiny_llama_linear_rope(tmp_path_factory) -> str:
    """tiny_llama's weights with linear RoPE scaling (positions / 4)."""
    return _make_tiny(tmp_path_factory, "llama", "--rope-scaling", "linear", "--rope-factor", "4")


@pytest.fixture
def no_leftover_processes(monkeypatch):
    """Fails the test if any process it started is alive 10 s after it ended (then kills them).
    Apply to every test that kills or crashes a run."""
    from process_tree import TAG_ENV, new_tag, survivors_after_grace

    tag = new_tag()
    monkeypatch.setenv(TAG_ENV, tag)
    yield
    survivors = survivors_after_grace(tag)
    if survivors:
        pytest.fail("processes outlived the test by 10 s:\n  " + "\n  ".join(survivors), pytrace=False)
