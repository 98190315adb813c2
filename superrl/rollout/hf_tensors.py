"""Read an HF-format Llama / Qwen2 directory (config.json + *.safetensors) without `transformers`.

The embedded engine owns its own forward pass, so all it needs from the checkpoint is the handful of
architecture numbers below and the raw tensors under their HF names.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    qkv_bias: bool
    tie_word_embeddings: bool
    rope: dict  # HF `rope_parameters`: rope_type, rope_theta and the type's scaling fields
    eos_token_ids: tuple


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _as_id_tuple(value) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _rope_parameters(cfg: dict) -> dict:
    """transformers 5 writes `rope_parameters`; 4.x wrote `rope_theta` + `rope_scaling` (key `type`)."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    rope["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
    return rope


def read_config(model_dir: str) -> DecoderConfig:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: EmbeddedEngine needs an HF-format model directory")
    cfg = json.loads(path.read_text())
    archs = cfg.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ValueError(f"{path}: architectures={archs} is not supported by the embedded engine "
                         f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: hidden_act={cfg['hidden_act']!r} is not supported (only silu)")
    is_qwen2 = "Qwen2ForCausalLM" in archs
    heads = cfg["num_attention_heads"]
    # Generation defaults may name more stop tokens than config.json (e.g. chat models' end-of-turn).
    generation = _read_json(Path(model_dir) / "generation_config.json")
    eos = _as_id_tuple(cfg.get("eos_token_id")) + _as_id_tuple(generation.get("eos_token_id"))
    return DecoderConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        qkv_bias=True if is_qwen2 else bool(cfg.get("attention_bias", False)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", not is_qwen2)),
        rope=_rope_parameters(cfg),
        eos_token_ids=tuple(dict.fromkeys(eos)),
    )


def load_tensors(model_dir: str) -> dict:
    """All tensors of all *.safetensors shards in `model_dir`, keyed by their HF names."""
    shards = sorted(Path(model_dir).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    tensors = {}
    for shard in shards:
        tensors.update(load_file(str(shard), device="cpu"))
    return tensors


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]
