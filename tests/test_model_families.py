"""Qwen3 (per-head q/k norms, explicit head_dim) and Llama 3 / linear RoPE scaling through the megatron model
provider and the one weight mapping: logits equal `transformers` at every layout, the round trip
is bit-exact. (Engine and sync: test_rollout_embedded.py, test_sync.py; the reader: test_hf_config.py.)"""
import pytest
import torch

from compare_logits import hf_logits, random_tokens
from dist_harness import run_torchrun
from superrl.weights.hf_safetensors import HFCheckpointReader
from test_convert import check_ok, run_tool

TOL = 1e-5
SEQ_LEN = 48  # past the llama3 test model's original context (16): its RoPE scaling acts
LAYOUTS = ["tp1pp1", "tp2pp1", "tp1pp2", "tp2pp2"]


@pytest.fixture(scope="module")
def models(tiny_qwen3, tiny_llama3_rope, tiny_llama_linear_rope) -> dict:
    return {"qwen3": tiny_qwen3, "llama3_rope": tiny_llama3_rope, "llama_linear_rope": tiny_llama_linear_rope}


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("model_families")
    models_args = [arg for name, d in models.items() for arg in ("--model", f"{name}={d}")]
    rank0 = run_torchrun("model_families.py", 4, [*models_args, "--seq-len", SEQ_LEN, "--work-dir", work])[0]
    return {**rank0, "work": work}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["qwen3", "llama3_rope", "llama_linear_rope"])
def test_logits_match_transformers_at_every_layout(converted, name, layout):
    diff = converted["hf_diff"][f"{name}@{layout}"]
    assert diff <= TOL, f"{name} at {layout}: max |megatron - HF| = {diff}"


@pytest.mark.parametrize("name", ["llama3_rope", "llama_linear_rope"])
def test_rope_scaling_changes_these_logits(models, tiny_llama, name):
    """The same weights without the scaling are far outside the tolerance on the tested tokens, so
    a model provider that ignored the config's rope type would fail the test above."""
    tokens = random_tokens(512, 2, SEQ_LEN, seed=0)
    assert (hf_logits(tiny_llama, tokens) - hf_logits(models[name], tokens)).abs().max() > 100 * TOL


@pytest.mark.parametrize("name", ["qwen3", "llama3_rope"])
def test_round_trip_is_bit_exact(models, converted, tmp_path, name):
    check_ok(run_tool("convert_megatron_to_hf.py", "--megatron-dir", converted["work"] / f"{name}_tp2pp2",
                      "--out-dir", tmp_path))
    original, exported = HFCheckpointReader(models[name]), HFCheckpointReader(str(tmp_path))
    assert exported.names() == original.names()
    for tensor in original.names():
        assert torch.equal(original(tensor), exported(tensor)), tensor
    if name == "qwen3":
        assert any(n.endswith("self_attn.q_norm.weight") for n in original.names())
