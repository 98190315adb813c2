"""Rotary position embeddings, computed exactly as `transformers` does (float32 tables, half-split)."""
import torch

from superrl.hf_config import RopeParameters
from superrl.rope import inverse_frequencies


def cos_sin_table(rope: RopeParameters, head_dim: int, max_positions: int, dtype, device) -> tuple:
    """cos and *signed* sin for positions [0, max_positions): each [max_positions, head_dim].

    HF rotates with rotate_half(x) = cat(-x2, x1); we use roll(x) = cat(x2, x1) and fold the minus
    sign into the first half of the sin table, which saves a negation and a concat per call.
    """
    inv_freq = inverse_frequencies(rope, head_dim)
    freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos = torch.cat([freqs.cos(), freqs.cos()], dim=-1)
    signed_sin = torch.cat([-freqs.sin(), freqs.sin()], dim=-1)
    return cos.to(dtype=dtype, device=device), signed_sin.to(dtype=dtype, device=device)


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., head_dim] in place by half-split pairs (tables from `cos_sin_table`, broadcast
    to x). In place so that rotated keys stay next to the values in the fused qkv output, ready
    for one cache write. Same operations, same order as x * cos + roll(x) * sin: bit-identical."""
    rolled = x.roll(x.shape[-1] // 2, dims=-1)
    return x.mul_(cos).addcmul_(rolled, signed_sin)
