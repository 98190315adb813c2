"""RoPE inverse frequencies of every rope type `superrl.hf_config` accepts, exactly as `transformers`
computes them: the one definition the trainer's megatron model and the rollout engine share."""
import math

import torch

from superrl.hf_config import RopeParameters


def _llama3_scaled(inv_freq: torch.Tensor, rope: RopeParameters) -> torch.Tensor:
    """Llama 3.1 frequency-dependent interpolation (low frequencies / factor, a smooth ramp between)."""
    factor, low, high = rope.factor, rope.low_freq_factor, rope.high_freq_factor
    old_len = rope.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(is_medium, smoothed, scaled)


def inverse_frequencies(rope: RopeParameters, head_dim: int) -> torch.Tensor:
    """float32 [head_dim // 2]; hf_config refuses the rope types not handled here by name."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (rope.theta ** exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        return _llama3_scaled(inv_freq, rope)
    return inv_freq
