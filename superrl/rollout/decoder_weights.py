"""Decoder parameters in fused buffers, addressable by their HF names.

The forward wants one qkv GEMM and one gate/up GEMM per layer; weight sync wants to write
`model.layers.3.self_attn.k_proj.weight`. Both get what they want because every HF-named tensor in
`by_name` is a *view* into the fused buffer: `copy_` into the view updates the fused weight in
place, so no buffer is ever reallocated (data_ptrs stay fixed, e.g. for CUDA graphs or pinned
streams).
"""
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from superrl.hf_config import ModelArch
from superrl.rollout.shared_weights import MemfdArena, SharedWeights

LM_HEAD = "lm_head.weight"
EMBED = "model.embed_tokens.weight"


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [(heads + 2 * kv_heads) * head_dim, hidden]: q_proj, k_proj, v_proj rows
    qkv_bias: Optional[torch.Tensor]
    o_proj: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]: gate_proj rows, then up_proj rows
    down_proj: torch.Tensor
    q_norm: Optional[torch.Tensor] = None  # [head_dim] (Qwen3)
    k_norm: Optional[torch.Tensor] = None


def _split_rows(buffer: torch.Tensor, names: list, sizes: list) -> dict:
    return dict(zip(names, buffer.split(sizes, dim=0)))


class DecoderWeights:
    def __init__(self, cfg: ModelArch, dtype: torch.dtype, device: torch.device, shared: bool = False):
        """shared: carve every parameter out of one `MemfdArena` other processes can map (CPU)."""
        def empty(*shape):
            return torch.empty(*shape, dtype=dtype, device=device)

        self.arena = None
        if shared:
            self.arena = MemfdArena(parameter_numel(cfg), dtype)
            empty = self.arena.carve
        self.cfg = cfg
        self.by_name: dict = {}
        self.embed = self._register(EMBED, empty(cfg.vocab_size, cfg.hidden_size))
        self.final_norm = self._register("model.norm.weight", empty(cfg.hidden_size))
        self.lm_head = (self.embed if cfg.tied_embeddings
                        else self._register(LM_HEAD, empty(cfg.vocab_size, cfg.hidden_size)))
        self.layers = [self._build_layer(i, empty) for i in range(cfg.num_layers)]

    def _register(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        self.by_name[name] = tensor
        return tensor

    def _build_layer(self, index: int, empty) -> LayerWeights:
        cfg, prefix = self.cfg, f"model.layers.{index}"
        attn = [f"{prefix}.self_attn.{p}_proj" for p in "qkv"]
        qkv_sizes = [cfg.num_heads * cfg.head_dim] + 2 * [cfg.num_kv_heads * cfg.head_dim]
        layer = LayerWeights(
            input_norm=self._register(f"{prefix}.input_layernorm.weight", empty(cfg.hidden_size)),
            qkv=empty(sum(qkv_sizes), cfg.hidden_size),
            qkv_bias=empty(sum(qkv_sizes)) if cfg.qkv_bias else None,
            o_proj=self._register(f"{prefix}.self_attn.o_proj.weight",
                                  empty(cfg.hidden_size, cfg.num_heads * cfg.head_dim)),
            post_norm=self._register(f"{prefix}.post_attention_layernorm.weight", empty(cfg.hidden_size)),
            gate_up=empty(2 * cfg.ffn_hidden_size, cfg.hidden_size),
            down_proj=self._register(f"{prefix}.mlp.down_proj.weight",
                                     empty(cfg.hidden_size, cfg.ffn_hidden_size)),
        )
        if cfg.qk_norm:
            layer.q_norm = self._register(f"{prefix}.self_attn.q_norm.weight", empty(cfg.head_dim))
            layer.k_norm = self._register(f"{prefix}.self_attn.k_norm.weight", empty(cfg.head_dim))
        self.by_name.update(_split_rows(layer.qkv, [f"{n}.weight" for n in attn], qkv_sizes))
        if layer.qkv_bias is not None:
            self.by_name.update(_split_rows(layer.qkv_bias, [f"{n}.bias" for n in attn], qkv_sizes))
        mlp = [f"{prefix}.mlp.gate_proj.weight", f"{prefix}.mlp.up_proj.weight"]
        self.by_name.update(_split_rows(layer.gate_up, mlp, 2 * [cfg.ffn_hidden_size]))
        return layer

    def shared(self) -> Optional[SharedWeights]:
        """How other processes on this host map these weights; None unless built `shared`."""
        return None if self.arena is None else self.arena.describe(self.by_name)

    def _target(self, name: str) -> torch.Tensor:
        if name == LM_HEAD and self.cfg.tied_embeddings:
            return self.embed  # tied: the output projection *is* the embedding
        if name not in self.by_name:
            raise KeyError(f"update_weights: unknown parameter name {name!r} "
                           f"(expected HF names such as {EMBED!r})")
        return self.by_name[name]

    def copy_from(self, named_tensors: Iterable) -> set:
        """In-place `copy_` of each (HF name, full tensor); returns the names written."""
        written = set()
        for name, tensor in named_tensors:
            target = self._target(name)
            if tuple(tensor.shape) != tuple(target.shape):
                raise ValueError(f"update_weights: {name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(target.shape)}")
            target.copy_(tensor)
            written.add(name)
        return written

    def load(self, tensors: dict) -> None:
        """Fill every parameter from a full HF state dict; a missing tensor is an error."""
        missing = sorted(set(self.by_name) - set(tensors))
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensors, e.g. {missing[:3]}")
        # Others are skipped: rotary inv_freq buffers, or a tied model's copy of the embedding
        # (tied, the output projection IS the embedding, as in transformers).
        self.copy_from((n, t) for n, t in tensors.items() if n in self.by_name)


def parameter_numel(cfg: ModelArch) -> int:
    """Elements of all parameters: the HF-named views tile the fused buffers exactly."""
    return sum(t.numel() for t in DecoderWeights(cfg, torch.float32, torch.device("meta")).by_name.values())
