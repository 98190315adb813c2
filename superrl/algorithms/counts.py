"""DP-global statistics as all-reduced SUMS of counts (never an average of averages).

`group=None` means "single process, no all-reduce" (not torch.distributed's WORLD default): the
trainer passes the data-parallel group explicitly.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

ProcessGroup = Optional[dist.ProcessGroup]


def comm_device(group: dist.ProcessGroup) -> torch.device:
    """NCCL only reduces CUDA tensors; every other backend here reduces CPU tensors."""
    try:
        backend = str(dist.get_backend(group))
    except (ValueError, RuntimeError):  # a group not registered in the world map
        backend = group.name()
    if "nccl" in backend.lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Detached float64 SUM of `values` over `group` (a plain float64 copy when group is None).

    float64 keeps token counts and sums of squared rewards exact far beyond any batch size.
    """
    out = values.detach().to(torch.float64)
    if group is None:
        return out.clone()
    buf = out.to(comm_device(group))
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    return buf.to(values.device)


def all_reduce_max(values: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Detached float64 MAX of `values` over `group` (a plain float64 copy when group is None), on
    the host. Maxima are the one statistic a sum of counts cannot give."""
    out = values.detach().to(torch.float64)
    if group is None:
        return out.cpu().clone()
    buf = out.to(comm_device(group))
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=group)
    return buf.cpu()


def count_vector(*values) -> torch.Tensor:
    """float64 CPU vector from python numbers or 0-dim tensors (any device), for all_reduce_sum."""
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def valid_rows(mask: torch.Tensor) -> torch.Tensor:
    """[B] bool: rows with at least one valid token. Empty rows (padding) are not sequences."""
    return mask.sum(dim=-1) > 0


@dataclass(frozen=True)
class TokenCounts:
    """Global numbers of valid tokens and of non-empty sequences in one optimizer step's batch."""
    num_tokens: float
    num_seqs: float

    def denominator(self, loss_agg: str) -> float:
        """The global normaliser `aggregate()` needs for `loss_agg` (tokens or sequences)."""
        return self.num_tokens if loss_agg == "token_mean" else self.num_seqs


def global_token_counts(mask: torch.Tensor, group: ProcessGroup = None) -> TokenCounts:
    """Counts over the whole local batch `mask [B, T]` of one optimizer step, summed over DP.

    Call it once per optimizer step on all rows that step consumes (all micro-batches), then pass
    `counts.denominator(loss_agg)` to `aggregate()` for every micro-batch.
    """
    num_tokens, num_seqs = all_reduce_sum(count_vector(mask.sum(), valid_rows(mask).sum()), group).tolist()
    return TokenCounts(num_tokens=num_tokens, num_seqs=num_seqs)


def global_token_mean(values: torch.Tensor, mask: torch.Tensor, group: ProcessGroup = None) -> float:
    """DP-global token mean of `values [B, T]` over `mask`, e.g. the policy entropy H that the
    `entropy` hybrid weighting needs as a step constant. Returns 0.0 when there are no tokens."""
    total, count = all_reduce_sum(count_vector((values.detach() * mask).sum(), mask.sum()), group).tolist()
    return total / count if count > 0 else 0.0
