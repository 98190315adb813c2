"""Collectives checked against their group's backend device, in a gloo world that poses as NCCL.

Inside `nccl_world(accelerator)`, every process group reports the backend "nccl" (so code that
asks `dist.get_backend` or `counts.comm_device` picks the GPU, as it would on a cluster), and every
tensor collective first asserts that its tensors sit on `accelerator`, the device NCCL reduces:
a CPU tensor handed to an "NCCL" group fails here as it fails on a GPU. The collective then runs
on gloo, on the tensors' host data.
"""
import contextlib

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

TENSOR_COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
                      "send", "recv", "isend", "irecv", "reduce", "gather", "scatter", "all_to_all_single",
                      "_all_gather_base", "_reduce_scatter_base")
# torch picks the device of these itself (by the group's real backend): they run unguarded.
OBJECT_COLLECTIVES = ("broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list")


class CollectiveDeviceError(AssertionError):
    """A collective got a tensor that is not on its group's backend device."""


def _tensors(args, kwargs) -> list:
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found += [v for v in value if isinstance(v, torch.Tensor)]
    return found


def _guarded(name: str, collective, on_accelerator, host_data):
    def checked(*args, **kwargs):
        for tensor in _tensors(args, kwargs):
            if not on_accelerator(tensor):
                raise CollectiveDeviceError(
                    f"dist.{name} on an NCCL group got a tensor on {tensor.device} (shape {tuple(tensor.shape)}); "
                    "NCCL only communicates tensors on the GPU")
        args = [host_data(a) if isinstance(a, torch.Tensor) else
                [host_data(v) for v in a] if isinstance(a, list) else a for a in args]
        kwargs = {k: host_data(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return collective(*args, **kwargs)
    return checked


def _replace(replacements: dict) -> dict:
    """Set c10d.NAME (and dist.NAME where public) for each NAME; return what was there."""
    saved = {}
    for name, value in replacements.items():
        saved[name] = getattr(c10d, name)
        setattr(c10d, name, value)
        if hasattr(dist, name):
            setattr(dist, name, value)
    return saved


def _unguarded(object_collective, originals: dict):
    def run(*args, **kwargs):
        guarded = _replace(originals)
        try:
            return object_collective(*args, **kwargs)
        finally:
            _replace(guarded)
    return run


@contextlib.contextmanager
def nccl_world(on_accelerator, host_data):
    """`on_accelerator(tensor)`: whether the tensor is on the (fake) GPU; `host_data(tensor)`: the
    plain CPU tensor holding its values (aliasing them, so results land in place)."""
    originals = {name: getattr(c10d, name) for name in (*TENSOR_COLLECTIVES, "get_backend")}
    replacements = {name: _guarded(name, originals[name], on_accelerator, host_data) for name in TENSOR_COLLECTIVES}
    replacements["get_backend"] = lambda group=None: "nccl"
    replacements.update({name: _unguarded(getattr(c10d, name), originals) for name in OBJECT_COLLECTIVES})
    saved, saved_version = _replace(replacements), torch.cuda.nccl.version
    torch.cuda.nccl.version = lambda: (2, 0, 0)  # torch's c10d logger asks NCCL groups for it
    try:
        yield
    finally:
        _replace(saved)
        torch.cuda.nccl.version = saved_version
