"""Version-gated runtime patches of megatron-core 0.16.1: CPU/gloo support, and an upstream fix.

`apply()` installs the CPU patches only when CUDA is absent (or `force`), and the torch-Adam resume
fix (torch_adam_step) wherever megatron falls back to torch's Adam, GPU included. Each patch lives
in its own module and refuses to apply (PatchMismatchError) when the megatron-core code it rewrites
is not what it expects.
"""
import torch

from . import (cuda_redirect, rng_tracker, tensor_cuda_calls, tensor_type_checks, torch_adam_step,
               torch_norm_sequence_parallel)
from ._core import PatchMismatchError, check_megatron_version

__all__ = ["apply", "PatchMismatchError"]
_applied = False


def apply(force: bool = False) -> bool:
    """Patch megatron-core. Returns True when the CPU patches are (already) in place."""
    on_cpu = force or not torch.cuda.is_available()
    if on_cpu:
        _apply_cpu_patches()
    torch_adam_step.apply_if_needed()  # after the CPU patches, which rebind megatron's modules
    return on_cpu


def _apply_cpu_patches() -> None:
    global _applied
    if _applied:
        return
    check_megatron_version()
    cuda_redirect.apply()  # first: later patches recompile functions in the rebound modules
    rng_tracker.apply()
    tensor_type_checks.apply()
    tensor_cuda_calls.apply()
    torch_norm_sequence_parallel.apply()
    _applied = True
