"""Patch 5: `Tensor.cuda()` calls on code paths we use; `.cuda()` raises without CUDA.

Tensor methods cannot be redirected through megatron's module-local `torch` (patch 2), so the few
functions that call them are recompiled with `.cuda()` replaced by a no-op move to the CPU.
"""
from ._core import apply_rewrites

REWRITES = [
    # Tied embeddings at PP > 1: first and last stage all-reduce the shared weight.
    ("megatron.core.models.common.language_module.language_module",
     "LanguageModule.setup_embeddings_and_output_layer",
     [("weight.data = weight.data.cuda()", "weight.data = weight.data.cpu()")]),
    # Reshardable distributed-optimizer checkpoints gather state through DP rank 0.
    ("megatron.core.optimizer.distrib_optimizer", "DistributedOptimizer.get_parameter_state_dp_zero",
     [("send_tensor = send_tensor.cuda()", "send_tensor = send_tensor.cpu()")]),
    ("megatron.core.tensor_parallel.data", "broadcast_data",
     [("data[key].cuda()", "data[key].cpu()")]),
]


def apply() -> None:
    apply_rewrites(REWRITES)
