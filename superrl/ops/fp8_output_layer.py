"""The FP8 output projection a model uses when `model.fp8_output_layer` is on.

It owns only the FP8 scaling state; the weight stays the model's (possibly tied) parameter and is
passed in on every call, like megatron's output_layer(hidden, weight=...).
"""
import torch
from torch import nn

from superrl.ops.fp8_projection import fp8_fused_linear_logprobs_and_entropy, fp8_linear
from superrl.ops.fp8_scaling import FP8Recipe, FP8Scaling
from superrl.ops.fp8_te import TELinear, transformer_engine_usable


class FP8OutputLayer(nn.Module):
    """logits = hidden @ weight.T in FP8 (E4M3 forward, E5M2 backward, delayed scaling).

    `forward` returns full logits: through Transformer Engine when it imports and the weight is
    on CUDA, else through torch._scaled_mm with this module's `scaling` buffers.
    `logprobs_and_entropy` is the chunked fused path (never [T, V/tp] logits) and always runs on
    torch._scaled_mm, which is the same cuBLASLt FP8 GEMM on GPU.
    """

    def __init__(self, recipe: FP8Recipe = FP8Recipe()):
        super().__init__()
        self.recipe = recipe
        self.scaling = FP8Scaling(recipe)
        self._te_linear = None

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if transformer_engine_usable(weight):
            return self._te_for(weight)(hidden)
        return fp8_linear(hidden, weight, self.scaling)

    def logprobs_and_entropy(self, hidden, weight, targets, tp_group=None, chunk_size=None):
        return fp8_fused_linear_logprobs_and_entropy(hidden, weight, targets, self.scaling,
                                                     tp_group, chunk_size)

    def _te_for(self, weight: torch.Tensor) -> TELinear:
        if self._te_linear is None or self._te_linear.weight is not weight:
            self._te_linear = TELinear(weight, self.recipe)
        return self._te_linear
