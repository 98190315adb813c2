"""Version-gated runtime patches that let megatron-core 0.16.1 run on CPU with gloo.

`apply()` is a no-op when CUDA is available. Each patch lives in its own module and refuses to
apply (PatchMismatchError) when the megatron-core code it rewrites is not what it expects.
"""
import torch

from . import cuda_redirect, rng_tracker, tensor_cuda_calls, tensor_type_checks, torch_adam_step
from ._core import PatchMismatchError, check_megatron_version

__all__ = ["apply", "PatchMismatchError"]
_applied = False


def apply(force: bool = False) -> bool:
    """Patch megatron-core for CPU. Returns True when the patches are (already) in place."""
    global _applied
    if torch.cuda.is_available() and not force:
        return False
    if _applied:
        return True
    check_megatron_version()
    cuda_redirect.apply()  # first: later patches recompile functions in the rebound modules
    rng_tracker.apply()
    tensor_type_checks.apply()
    tensor_cuda_calls.apply()
    torch_adam_step.apply()
    _applied = True
    return True
