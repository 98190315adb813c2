"""FP8 delayed scaling (Transformer-Engine recipe): per-tensor scales from an amax history.

For a tensor role (activations, weights, gradients) the scale used now comes from the amaxes
recorded in earlier steps:  scale = fp8_max / max(amax_history) / 2**margin,  x_fp8 = cast(x * scale),
and dequantisation multiplies by 1/scale. After each use the current amax is pushed to the front
of the history (length `amax_history_len`) and the scale recomputed for the next step.

One deviation from TE: while a history is still empty (the very first step), each quantisation
takes a just-in-time scale from its own amax instead of TE's initial scale of 1, which would clip
or flush most values of a first step.

The state (amax history, scale) is float32 buffers: it moves with the model (`.to(device)`), is
saved in its checkpoints, and, like TE's FP8 metadata, stays float32 when the model is cast to
bf16/fp16 (a bf16 amax would round every later scale).
"""
from dataclasses import dataclass

import torch
from torch import nn

FORWARD_DTYPE = torch.float8_e4m3fn  # activations and weights: more mantissa (3 bits)
BACKWARD_DTYPE = torch.float8_e5m2  # gradients: more range (5 exponent bits)


@dataclass(frozen=True)
class FP8Recipe:
    """TE's DelayedScaling(fp8_format=HYBRID, amax_compute_algo="max") parameters."""

    amax_history_len: int = 16
    margin: int = 0

    def __post_init__(self):
        if not isinstance(self.amax_history_len, int) or self.amax_history_len < 1:
            raise ValueError(f"amax_history_len must be an int >= 1, got {self.amax_history_len!r}")
        if not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"margin must be an int >= 0, got {self.margin!r}")


def amax_of(x: torch.Tensor) -> torch.Tensor:
    return x.detach().abs().amax().float()


class DelayedScaler(nn.Module):
    """Scale state of one FP8 tensor role; buffers, so it is saved with the model's state_dict."""

    def __init__(self, fp8_dtype: torch.dtype, recipe: FP8Recipe):
        super().__init__()
        self.fp8_dtype = fp8_dtype
        self.fp8_max = torch.finfo(fp8_dtype).max
        self.margin = recipe.margin
        self.register_buffer("amax_history", torch.zeros(recipe.amax_history_len))
        self.register_buffer("scale", torch.ones(()))
        self._pending_amax = None

    def _apply(self, fn, recurse=True):
        # Follow the model's device, never its dtype: `fn` may be a dtype cast (`.bfloat16()`,
        # Float16Module), so it is applied to a probe only to learn the target device.
        device = fn(self.scale.detach()).device
        for name, buffer in self._buffers.items():
            self._buffers[name] = buffer.to(device)
        return self

    def scale_from_amax(self, amax: torch.Tensor) -> torch.Tensor:
        return self.fp8_max / amax / 2 ** self.margin

    def _scale_for(self, amax_now: torch.Tensor) -> torch.Tensor:
        """The delayed scale, or a just-in-time one while no amax was recorded (no host sync)."""
        just_in_time = self.scale_from_amax(amax_now.clamp(min=torch.finfo(torch.float32).tiny))
        return torch.where(self.amax_history.amax() > 0, self.scale, just_in_time)

    def _cast(self, x: torch.Tensor, amax: torch.Tensor):
        scale = self._scale_for(amax)
        # Saturate explicitly: casting out-of-range values gives inf (E5M2) or NaN on some backends.
        x_fp8 = (x.float() * scale).clamp_(-self.fp8_max, self.fp8_max).to(self.fp8_dtype)
        return x_fp8, scale.reciprocal()

    def quantize(self, x: torch.Tensor, amax: torch.Tensor = None):
        """Whole-tensor use for this step: returns (x_fp8, dequant scale) and records amax(|x|),
        or `amax` when given (the amax of the whole tensor that x is this rank's shard of)."""
        amax = amax_of(x) if amax is None else amax
        quantized = self._cast(x.detach(), amax)
        self.record(amax)
        return quantized

    def quantize_part(self, x: torch.Tensor):
        """One chunk of a tensor that is quantised chunk by chunk within a step; the step's amax
        (max over the chunks) is recorded by `record_pending`."""
        amax = amax_of(x)
        self._pending_amax = amax if self._pending_amax is None else torch.maximum(self._pending_amax, amax)
        return self._cast(x.detach(), amax)

    def record_pending(self, reduce_amax=None) -> None:
        """`reduce_amax(amax)`: turns this rank's amax into the whole tensor's (in place)."""
        if self._pending_amax is not None:
            if reduce_amax is not None:
                reduce_amax(self._pending_amax)
            self.record(self._pending_amax)
            self._pending_amax = None

    @torch.no_grad()
    def record(self, amax: torch.Tensor) -> None:
        """Push amax to the front of the history and update the scale for the next use; a zero or
        non-finite history max keeps the previous scale."""
        self.amax_history.copy_(torch.roll(self.amax_history, 1))
        self.amax_history[0] = amax
        history_max = self.amax_history.amax()
        usable = torch.isfinite(history_max) & (history_max > 0)
        self.scale.copy_(torch.where(usable, self.scale_from_amax(history_max), self.scale))


class FP8Scaling(nn.Module):
    """The three roles of one FP8 GEMM: input and weight (E4M3, forward), output grad (E5M2)."""

    def __init__(self, recipe: FP8Recipe = FP8Recipe()):
        super().__init__()
        self.recipe = recipe
        self.input = DelayedScaler(FORWARD_DTYPE, recipe)
        self.weight = DelayedScaler(FORWARD_DTYPE, recipe)
        self.grad_output = DelayedScaler(BACKWARD_DTYPE, recipe)
