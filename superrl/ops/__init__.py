"""Fused final-stage kernels: vocab-parallel log-probs and entropy, the chunked fused-linear
path, and the FP8 output projection."""
from superrl.ops.fp8_output_layer import FP8OutputLayer
from superrl.ops.fp8_projection import fp8_fused_linear_logprobs_and_entropy
from superrl.ops.fp8_scaling import FP8Recipe, FP8Scaling
from superrl.ops.fused_linear import fused_linear_logprobs_and_entropy
from superrl.ops.logprobs import logprobs_and_entropy

__all__ = ["FP8OutputLayer", "FP8Recipe", "FP8Scaling", "fp8_fused_linear_logprobs_and_entropy",
           "fused_linear_logprobs_and_entropy", "logprobs_and_entropy"]
