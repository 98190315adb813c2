"""The one HF config reader (superrl.hf_config) against `transformers`' own config classes, and the
trainer and the rollout engine agreeing on the same directory."""
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from superrl.hf_config import UnsupportedModelError, arch_from_hf_config, load_arch
from superrl.rollout import EmbeddedEngine, SamplingParams

BASE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "vocab_size": 512}
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
# Each omits or sets the keys whose defaults differ between readers or architectures.
CONFIGS = {
    "bare": {},
    "tied": {"tie_word_embeddings": True},
    "untied": {"tie_word_embeddings": False},
    "gqa_head_dim": {"num_key_value_heads": 2, "head_dim": 32},
    "rope_theta_4x": {"rope_theta": 1e6},
    "rope_parameters": {"rope_parameters": {"rope_type": "default", "rope_theta": 2e5}},
    "rope_scaling_linear_4x": {"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 5e5},
    "llama3": {"rope_parameters": LLAMA3_ROPE},
    "explicit_nulls": {"num_key_value_heads": None, "head_dim": None},
    "context_and_eps": {"max_position_embeddings": 128, "rms_norm_eps": 1e-5, "eos_token_id": [3, 4]},
}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _write(directory, cfg: dict) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    return str(directory)


def _transformers_view(hf) -> dict:
    """The same facts, as transformers' config object states them."""
    heads = hf.num_attention_heads
    rope = hf.rope_parameters
    eos = hf.eos_token_id
    return {"hidden_size": hf.hidden_size, "num_layers": hf.num_hidden_layers, "num_heads": heads,
            "num_kv_heads": hf.num_key_value_heads,
            "head_dim": getattr(hf, "head_dim", None) or hf.hidden_size // heads,
            "ffn_hidden_size": hf.intermediate_size, "vocab_size": hf.vocab_size,
            "rms_norm_eps": hf.rms_norm_eps, "tied_embeddings": hf.tie_word_embeddings,
            "max_position_embeddings": hf.max_position_embeddings,
            "rope_type": rope["rope_type"], "rope_theta": rope["rope_theta"], "rope_factor": rope.get("factor"),
            "eos_token_ids": () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)}


def _our_view(arch) -> dict:
    return {"hidden_size": arch.hidden_size, "num_layers": arch.num_layers, "num_heads": arch.num_heads,
            "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim, "ffn_hidden_size": arch.ffn_hidden_size,
            "vocab_size": arch.vocab_size, "rms_norm_eps": arch.rms_norm_eps,
            "tied_embeddings": arch.tied_embeddings, "max_position_embeddings": arch.max_position_embeddings,
            "rope_type": arch.rope.rope_type, "rope_theta": arch.rope.theta, "rope_factor": arch.rope.factor,
            "eos_token_ids": arch.eos_token_ids}


@pytest.mark.parametrize("family, variant", [
    (family, variant) for family in ARCHITECTURES for variant in CONFIGS
    # Qwen3Config refuses a null head_dim, and so do we (test_qwen3_fields_we_cannot_run...)
    if (family, variant) != ("qwen3", "explicit_nulls")])
def test_reader_gives_transformers_answers(tmp_path, family, variant):
    directory = _write(tmp_path / "m", {"architectures": [ARCHITECTURES[family]], "model_type": family,
                                        **BASE, **CONFIGS[variant]})
    assert _our_view(load_arch(directory)) == _transformers_view(AutoConfig.from_pretrained(directory))


@pytest.mark.parametrize("change, named", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type 'dynamic'"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"architectures": ["MistralForCausalLM"]}, "MistralForCausalLM"),
])
def test_unsupported_fields_are_refused_by_name(change, named):
    with pytest.raises(UnsupportedModelError, match=named):
        arch_from_hf_config({"architectures": ["LlamaForCausalLM"], **BASE, **change})


def test_null_where_transformers_needs_a_value_is_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="rms_norm_eps must not be null"):
        arch_from_hf_config({"architectures": ["LlamaForCausalLM"], **BASE, "rms_norm_eps": None})


@pytest.mark.parametrize("name", ["Qwen2ForCausalLM", "Qwen3ForCausalLM"])
def test_qwen_sliding_window_is_refused_by_name(name):
    with pytest.raises(UnsupportedModelError, match="use_sliding_window"):
        arch_from_hf_config({"architectures": [name], **BASE, "use_sliding_window": True})


@pytest.mark.parametrize("change, named", [
    ({"attention_bias": True}, "attention_bias"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding_attention"),
    ({"head_dim": None}, "head_dim must not be null"),
])
def test_qwen3_fields_we_cannot_run_are_refused_by_name(change, named):
    with pytest.raises(UnsupportedModelError, match=named):
        arch_from_hf_config({"architectures": ["Qwen3ForCausalLM"], **BASE, **change})


def test_only_qwen3_normalises_q_and_k():
    assert [arch_from_hf_config({"architectures": [name], **BASE}).qk_norm
            for name in ARCHITECTURES.values()] == [False, False, True]


@pytest.fixture(scope="module")
def untied_llama_without_tie_key(tmp_path_factory):
    """An untied Llama whose config.json omits `tie_word_embeddings`, as many real ones do (HF's
    Llama default: untied). The old engine reader defaulted Llama to tied and ran the embedding as
    lm_head, silently."""
    import make_tiny_model

    out = tmp_path_factory.mktemp("untied_llama") / "model"
    make_tiny_model.main(["--arch", "llama", "--out-dir", str(out), "--no-tie-embeddings"])
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("tie_word_embeddings", None)
    path.write_text(json.dumps(cfg))
    return str(out)


def test_engine_and_trainer_agree_on_untied_llama(untied_llama_without_tie_key):
    directory = untied_llama_without_tie_key
    engine = EmbeddedEngine(directory)
    assert engine.config == load_arch(directory)
    assert not engine.config.tied_embeddings
    assert engine.weights.lm_head.data_ptr() != engine.weights.embed.data_ptr()
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    assert not torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)  # the bug would matter
    torch.testing.assert_close(engine.state_dict()["lm_head.weight"], hf.lm_head.weight, rtol=0, atol=0)
    prompt = [1, 17, 42, 99, 7]
    ids = torch.tensor([prompt])
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                           min_new_tokens=12)[0, len(prompt):].tolist()
    got = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12), ignore_eos=True)
    assert got[0][0].token_ids == expected
