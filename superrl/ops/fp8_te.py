"""Transformer Engine backend for the FP8 output GEMM: CUDA only, imported lazily so that CPU
installs (no TE) never touch it. Not exercised by the CPU test suite.
"""
import torch

from superrl.ops.fp8_scaling import FP8Recipe


def transformer_engine_usable(tensor: torch.Tensor) -> bool:
    """True when `tensor` lives on a GPU and transformer_engine imports."""
    if not tensor.is_cuda:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


class TELinear:
    """te.pytorch.Linear under fp8_autocast(DelayedScaling(HYBRID)), sharing the model's weight.

    TE keeps its own amax histories (in the Linear's `_extra_state`), so `FP8Scaling` buffers are
    not used on this backend."""

    def __init__(self, weight: torch.nn.Parameter, recipe: FP8Recipe):
        import transformer_engine.pytorch as te
        from transformer_engine.common.recipe import DelayedScaling, Format

        self._fp8_autocast = te.fp8_autocast
        self._recipe = DelayedScaling(fp8_format=Format.HYBRID, margin=recipe.margin,
                                      amax_history_len=recipe.amax_history_len,
                                      amax_compute_algo="max")
        self.linear = te.Linear(weight.shape[1], weight.shape[0], bias=False,
                                params_dtype=weight.dtype, device=weight.device)
        self.linear.weight = weight  # the model's own (possibly embedding-tied) parameter
        self.weight = weight

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        with self._fp8_autocast(enabled=True, fp8_recipe=self._recipe):
            return self.linear(hidden)
