"""Engine weights in memory other processes on the host can map: the CPU analogue of handing a
colocated engine CUDA-IPC handles to its weights.

On CPU the engine carves every parameter out of one flat arena backed by an anonymous memory file
(`memfd`). Weight sync then lets every trainer rank of the replica map the arena through
/proc/<engine pid>/fd/<fd> and write its own TP/PP part of each HF tensor straight into the engine's
parameter, with no staging buffer and no second copy (superrl/sync/direct.py). A memfd needs no
name in /dev/shm, so nothing leaks when a process dies, and the memory lives as long as any
mapping or the descriptor does.
"""
import math
import os
import weakref
from dataclasses import dataclass

import torch

MEMFD_NAME = "superrl-engine-weights"  # how the arena shows in /proc/<pid>/maps (memfd:<name>)


@dataclass(frozen=True)
class SharedWeights:
    """What another process on the host needs to map the engine's weights (picklable)."""

    pid: int
    fd: int
    numel: int
    dtype: torch.dtype
    layout: dict  # HF name -> (storage offset, shape, stride) of the parameter in the arena

    def map(self) -> dict:
        """HF name -> a writable view of the engine's parameter, mapped into this process."""
        arena = torch.from_file(f"/proc/{self.pid}/fd/{self.fd}", shared=True, size=self.numel, dtype=self.dtype)
        return {name: arena.as_strided(shape, stride, offset) for name, (offset, shape, stride) in self.layout.items()}


class MemfdArena:
    """A flat tensor of `numel` elements in a memfd, mapped shared into this process."""

    def __init__(self, numel: int, dtype: torch.dtype):
        self.fd = os.memfd_create(MEMFD_NAME)
        element_size = torch.empty(0, dtype=dtype).element_size()
        os.ftruncate(self.fd, max(1, numel) * element_size)
        self.tensor = torch.from_file(f"/proc/self/fd/{self.fd}", shared=True, size=numel, dtype=dtype)
        weakref.finalize(self, os.close, self.fd)  # the mapping keeps the memory while tensors use it
        self._used = 0

    def carve(self, *shape) -> torch.Tensor:
        """The next unused `shape` block of the arena, as a view."""
        numel = math.prod(shape)
        block = self.tensor[self._used:self._used + numel].view(shape)
        self._used += numel
        return block

    def describe(self, named_views: dict) -> SharedWeights:
        layout = {name: (view.storage_offset(), tuple(view.shape), view.stride())
                  for name, view in named_views.items()}
        return SharedWeights(os.getpid(), self.fd, self.tensor.numel(), self.tensor.dtype, layout)


def can_share(device: torch.device) -> bool:
    """memfd and /proc are Linux; GPU engines would share through CUDA IPC instead."""
    return device.type == "cpu" and hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")
