"""Tensor-parallel group helpers: `tp_group=None` means "no tensor parallelism" (one full shard).

None is deliberately not the default process group: in a data-parallel run the world group is not
the vocab-sharding group, and reducing over it would silently mix unrelated ranks.
"""
import torch
import torch.distributed as dist


def tp_size(tp_group) -> int:
    return 1 if tp_group is None else dist.get_world_size(tp_group)


def tp_rank(tp_group) -> int:
    return 0 if tp_group is None else dist.get_rank(tp_group)


def all_reduce_(tensor: torch.Tensor, op, tp_group) -> torch.Tensor:
    """In-place all-reduce over the TP group; a no-op without tensor parallelism."""
    if tp_size(tp_group) > 1:
        dist.all_reduce(tensor, op=op, group=tp_group)
    return tensor
