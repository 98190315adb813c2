"""This rank's part of each full HF tensor, and where that part lands in the full tensor.

Both transports build full HF tensors straight in the bucket from these parts (the shared-memory
one by writing into a mapped region, the collective one by gathering into it), so neither needs
an all-gathered copy of a parameter next to its concatenation. Names, order, fusion splits and TP
split dimensions all come from the shared HF<->megatron mapping.
"""
import torch

from superrl.weights import mapping
from superrl.weights.load import unwrap_model


def local_hf_parts(model, arch, tp_size: int, pp_rank: int, pp_size: int):
    """(HF name, TP split dim, this rank's part of that HF tensor) for this stage, in export order."""
    model = unwrap_model(model)
    params = dict(model.named_parameters())
    for m, local, layer in mapping.exported_param_maps(arch, pp_rank, pp_size, model.uses_te_names):
        parts = mapping.split_shard(m, params[mapping.megatron_name(m, local)].detach(), arch, tp_size)
        for name, part in zip(mapping.hf_names(m, layer), parts):
            yield name, m.tp_dim, part


def landing_view(full: torch.Tensor, tp_dim: int, part_shape, tp_rank: int):
    """The view of `full` that TP rank `tp_rank`'s part fills as is, or None when it needs a copy:
    parts split along dim 1 are strided there, and padded-vocab rows past the end are dropped."""
    rows = part_shape[0]
    if tp_dim == 0 and (tp_rank + 1) * rows <= full.shape[0]:
        return full.narrow(0, tp_rank * rows, rows)
    return None


def write_part(full: torch.Tensor, tp_dim, part: torch.Tensor, tp_rank: int) -> None:
    """Put one TP rank's part where concatenating all ranks' parts along `tp_dim` would put it."""
    if tp_dim is None:  # replicated: rank 0's copy is the tensor
        if tp_rank == 0:
            full.copy_(part)
        return
    start = tp_rank * part.shape[tp_dim]
    length = min(part.shape[tp_dim], full.shape[tp_dim] - start)  # drops padded-vocab rows
    if length > 0:
        full.narrow(tp_dim, start, length).copy_(part.narrow(tp_dim, 0, length))
