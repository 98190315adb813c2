"""The FP8 output projection a model uses when `model.fp8_output_layer` is on.

It owns only the FP8 scaling state; the weight stays the model's (possibly tied) parameter and is
passed in on every call, like megatron's output_layer(hidden, weight=...).
"""
from torch import nn

from superrl.ops.fp8_projection import fp8_fused_linear_logprobs_and_entropy
from superrl.ops.fp8_scaling import FP8Recipe, FP8Scaling


class FP8OutputLayer(nn.Module):
    """log-probs and entropy of hidden @ weight.T in FP8 (E4M3 forward, E5M2 backward, delayed
    scaling) through the chunked fused path, which never materialises [T, V/tp] logits: the
    training loss never needs full logits. Runs on torch._scaled_mm, the cuBLASLt FP8 GEMM on GPU.
    """

    def __init__(self, recipe: FP8Recipe = FP8Recipe()):
        super().__init__()
        self.scaling = FP8Scaling(recipe)

    def logprobs_and_entropy(self, hidden, weight, targets, tp_group=None, chunk_size=None):
        return fp8_fused_linear_logprobs_and_entropy(hidden, weight, targets, self.scaling,
                                                     tp_group, chunk_size)
