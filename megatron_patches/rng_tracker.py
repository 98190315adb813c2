"""Patch 1: megatron's RNG tracker reads and writes CUDA generator state; use the CPU generator.

The tracker keeps one RNG stream per parallel region (e.g. tensor-parallel dropout) and swaps
them in and out with these two functions, so swapping CPU generator state keeps its semantics.
"""
import inspect

import torch

from ._core import PatchMismatchError

MODULE = "megatron.core.tensor_parallel.random"
_EXPECTED_PARAMS = {
    "_get_cuda_rng_state": ["device", "clone", "graph_safe"],
    "_set_cuda_rng_state": ["new_state", "device", "graph_safe"],
}


def _get_cpu_rng_state(device=None, clone=False, graph_safe=False):
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def apply() -> None:
    import importlib

    module = importlib.import_module(MODULE)
    for name, params in _EXPECTED_PARAMS.items():
        found = list(inspect.signature(getattr(module, name)).parameters)
        if found != params and getattr(module, name) not in (_get_cpu_rng_state, _set_cpu_rng_state):
            raise PatchMismatchError(f"{MODULE}.{name}: expected parameters {params}, found {found}")
    module._get_cuda_rng_state = _get_cpu_rng_state
    module._set_cuda_rng_state = _set_cpu_rng_state
