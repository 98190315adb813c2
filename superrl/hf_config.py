"""What we read from an HF `config.json`: the architecture facts every component shares."""
import json
import os
from dataclasses import dataclass

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelArch:
    name: str  # HF class, e.g. "Qwen2ForCausalLM"
    family: str  # llama | qwen2
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    qkv_bias: bool
    tied_embeddings: bool
    max_position_embeddings: int

    def padded_vocab_size(self, multiple: int) -> int:
        return -(-self.vocab_size // multiple) * multiple


def _rope_theta(cfg: dict, path: str) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedModelError(f"{path}: rope_type {rope_type!r} is not supported (only 'default')")
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def arch_from_hf_config(cfg: dict, path: str = "config.json") -> ModelArch:
    names = cfg.get("architectures") or []
    name = names[0] if names else cfg.get("model_type", "<missing architectures>")
    if name not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: architecture {name!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    family = SUPPORTED_ARCHITECTURES[name]
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"{path}: hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
    heads = cfg["num_attention_heads"]
    return ModelArch(
        name=name, family=family, hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        ffn_hidden_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
        rope_theta=_rope_theta(cfg, path), rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        qkv_bias=family == "qwen2" or bool(cfg.get("attention_bias", False)),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
    )


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{hf_dir!r} has no config.json")
    with open(path) as f:
        return json.load(f)


def load_arch(hf_dir: str) -> ModelArch:
    return arch_from_hf_config(read_hf_config(hf_dir), os.path.join(hf_dir, "config.json"))
