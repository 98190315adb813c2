"""THE reader of an HF `config.json`: one typed architecture description (`ModelArch`) that the
trainer's model, the rollout engines, the weight mapping, the sync plan and the tools all share.

A field a config omits gets the default `transformers` gives it for that architecture
(`HF_DEFAULTS`, the one place those defaults are written); a field whose value we cannot run is
refused by name. transformers 5 writes RoPE settings as `rope_parameters`, 4.x as `rope_theta` +
`rope_scaling` (with `type` for `rope_type`); both read the same.
"""
import json
import os
from dataclasses import dataclass
from typing import Optional

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}

# transformers' LlamaConfig / Qwen2Config / Qwen3Config defaults for every field read below (transformers 5.x).
# num_key_value_heads None and head_dim None mean "num_attention_heads" and "hidden_size // heads".
_COMMON_DEFAULTS = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                    "num_attention_heads": 32, "num_hidden_layers": 32, "hidden_size": 4096, "head_dim": None}
HF_DEFAULTS = {
    "llama": {**_COMMON_DEFAULTS, "vocab_size": 32000, "intermediate_size": 11008, "num_key_value_heads": None,
              "max_position_embeddings": 2048, "attention_bias": False, "mlp_bias": False, "eos_token_id": 2},
    "qwen2": {**_COMMON_DEFAULTS, "vocab_size": 151936, "intermediate_size": 22016, "num_key_value_heads": 32,
              "max_position_embeddings": 32768, "use_sliding_window": False, "eos_token_id": None},
    "qwen3": {**_COMMON_DEFAULTS, "vocab_size": 151936, "intermediate_size": 22016, "num_key_value_heads": 32,
              "head_dim": 128, "max_position_embeddings": 32768, "attention_bias": False,
              "use_sliding_window": False, "layer_types": None, "eos_token_id": None},
}
# Fields that may be absent (then defaulted) but not null; the others' null derives a value.
REQUIRED_VALUES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "vocab_size", "rms_norm_eps", "max_position_embeddings", "hidden_act")
FAMILY_REQUIRED_VALUES = {"llama": (), "qwen2": (), "qwen3": ("head_dim",)}  # Qwen3Config types it int
# Switches whose "on" we cannot run (Llama's attention_bias also puts a bias on o_proj).
UNSUPPORTED_FLAGS = {"llama": ("attention_bias", "mlp_bias"), "qwen2": ("use_sliding_window",),
                     "qwen3": ("attention_bias", "use_sliding_window")}
DEFAULT_ROPE_THETA = 10000.0
# RoPE types and the scaling fields each needs (transformers' names); others are refused.
ROPE_FIELDS = {"default": (), "linear": ("factor",),
               "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class RopeParameters:
    rope_type: str  # a key of ROPE_FIELDS
    theta: float
    factor: Optional[float] = None  # linear, llama3
    low_freq_factor: Optional[float] = None  # llama3
    high_freq_factor: Optional[float] = None  # llama3
    original_max_position_embeddings: Optional[int] = None  # llama3


@dataclass(frozen=True)
class ModelArch:
    name: str  # HF class, e.g. "Qwen2ForCausalLM"
    family: str  # llama | qwen2 | qwen3
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    rope: RopeParameters
    rms_norm_eps: float
    qkv_bias: bool
    qk_norm: bool  # RMSNorm over head_dim on every q and k head before RoPE (Qwen3)
    tied_embeddings: bool
    max_position_embeddings: int
    eos_token_ids: tuple = ()  # config.json's, then generation_config.json's (stop tokens)

    @property
    def rope_theta(self) -> float:
        return self.rope.theta

    def padded_vocab_size(self, multiple: int) -> int:
        return -(-self.vocab_size // multiple) * multiple


def _family(cfg: dict, path: str) -> tuple:
    names = cfg.get("architectures") or []
    name = names[0] if names else cfg.get("model_type", "<missing architectures>")
    if name not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: architecture {name!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return name, SUPPORTED_ARCHITECTURES[name]


def _refuse_unsupported(get, family: str, path: str) -> None:
    if get("hidden_act") != "silu":
        raise UnsupportedModelError(f"{path}: hidden_act {get('hidden_act')!r} is not supported (only silu)")
    for flag in UNSUPPORTED_FLAGS[family]:
        if get(flag):
            raise UnsupportedModelError(f"{path}: {flag}=true is not supported")
    sliding = [t for t in get("layer_types") or () if t != "full_attention"]
    if sliding:
        raise UnsupportedModelError(f"{path}: layer_types {sorted(set(sliding))} are not supported "
                                    "(only full_attention)")


def _rope(cfg: dict, path: str) -> RopeParameters:
    fields = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope_type = fields.pop("rope_type", fields.pop("type", "default"))
    if rope_type not in ROPE_FIELDS:
        raise UnsupportedModelError(f"{path}: rope_type {rope_type!r} is not supported "
                                    f"(supported: {', '.join(ROPE_FIELDS)})")
    if fields.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError(f"{path}: partial_rotary_factor={fields['partial_rotary_factor']} is not "
                                    "supported (only 1.0)")
    missing = [k for k in ROPE_FIELDS[rope_type] if fields.get(k) is None]
    if missing:
        raise UnsupportedModelError(f"{path}: rope_type {rope_type!r} needs {', '.join(missing)}")
    theta = fields.get("rope_theta", cfg.get("rope_theta")) or DEFAULT_ROPE_THETA
    return RopeParameters(rope_type, float(theta), **{k: fields[k] for k in ROPE_FIELDS[rope_type]})


def _id_tuple(value) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def arch_from_hf_config(cfg: dict, path: str = "config.json", generation: Optional[dict] = None) -> ModelArch:
    """`generation`: the model's generation_config.json, which may name more stop tokens."""
    name, family = _family(cfg, path)
    defaults = HF_DEFAULTS[family]

    def get(key):  # absent: the default; null: "derive it" where transformers allows null
        return cfg[key] if key in cfg else defaults.get(key)

    nulls = [k for k in REQUIRED_VALUES + FAMILY_REQUIRED_VALUES[family] if get(k) is None]
    if nulls:
        raise UnsupportedModelError(f"{path}: {', '.join(nulls)} must not be null")
    _refuse_unsupported(get, family, path)
    heads = get("num_attention_heads")
    eos = _id_tuple(get("eos_token_id")) + _id_tuple((generation or {}).get("eos_token_id"))
    return ModelArch(
        name=name, family=family, hidden_size=get("hidden_size"), num_layers=get("num_hidden_layers"),
        num_heads=heads, num_kv_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim") or get("hidden_size") // heads,
        ffn_hidden_size=get("intermediate_size"), vocab_size=get("vocab_size"), rope=_rope(cfg, path),
        rms_norm_eps=get("rms_norm_eps"),
        qkv_bias=family == "qwen2",  # Qwen2's attention always has q/k/v biases
        qk_norm=family == "qwen3",
        tied_embeddings=bool(get("tie_word_embeddings")),
        max_position_embeddings=get("max_position_embeddings"),
        eos_token_ids=tuple(dict.fromkeys(eos)),
    )


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{hf_dir!r} has no config.json (an HF model directory is needed)")
    return _read_json(path)


def load_arch(hf_dir: str) -> ModelArch:
    generation = os.path.join(hf_dir, "generation_config.json")
    return arch_from_hf_config(read_hf_config(hf_dir), os.path.join(hf_dir, "config.json"),
                               _read_json(generation) if os.path.isfile(generation) else None)
