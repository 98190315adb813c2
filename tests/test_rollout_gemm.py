"""The oneDNN GEMM backend keeps to a bounded set of input shapes (oneDNN builds and keeps a
primitive, ~0.6 MB, per shape) while decode still runs on it."""
import random

import pytest
import torch

from superrl.rollout import EmbeddedEngine, SamplingParams, gemm


@pytest.fixture(scope="module")
def hidden_256_llama(tmp_path_factory) -> str:
    """Big enough that decode products pass oneDNN's size threshold (like bench/rollout.py's small)."""
    import make_tiny_model

    out = tmp_path_factory.mktemp("gemm") / "model"
    make_tiny_model.main(["--arch", "llama", "--out-dir", str(out), "--hidden", "256", "--layers", "1"])
    return str(out)


def test_onednn_row_counts_stay_in_a_fixed_set(hidden_256_llama, monkeypatch):
    if not gemm.onednn_linear_works(torch.float32):
        pytest.skip("torch has no working oneDNN linear here")
    seen = set()
    decide = gemm.OneDNNGemm._on_onednn

    def recording(self, x, weight):
        chosen = decide(self, x, weight)
        if chosen:
            seen.add(x.shape[0])
        return chosen

    monkeypatch.setattr(gemm.OneDNNGemm, "_on_onednn", recording)
    engine = EmbeddedEngine(hidden_256_llama, max_batch_size=16)
    assert isinstance(engine.decoder.gemm, gemm.OneDNNGemm)
    rng = random.Random(0)
    for batch in (1, 3, 9, 12, 16, 20):  # prefill lengths and decode row counts of many sizes
        prompts = [[rng.randrange(5, 512) for _ in range(rng.randint(1, 40))] for _ in range(batch)]
        engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=6), ignore_eos=True)
    assert seen and seen <= {8, 16}, seen
