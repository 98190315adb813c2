"""Fused final-stage kernels: vocab-parallel log-probs and entropy, chunked output projection,
FP8 output GEMM."""
from superrl.ops.fused_linear import fused_linear_logprobs_and_entropy
from superrl.ops.logprobs import logprobs_and_entropy

__all__ = ["fused_linear_logprobs_and_entropy", "logprobs_and_entropy"]
