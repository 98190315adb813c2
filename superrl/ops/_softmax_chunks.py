"""Per-chunk math of the vocab-parallel softmax, shared by every fused log-prob/entropy path.

The forward is split so that no collective runs per chunk:
  1. `local_stats` reads a block of this rank's logits rows and writes shift-stable partial sums;
  2. `outputs_from_stats` merges them over the TP group with two all-reduces of [T]-sized tensors.
`logits_grad_` turns a block of logits into dL/dz. Both walk the block in cache-sized row slices
with scratch buffers of one slice, so their temporaries stay small whatever the block (or T) is.
"""
from dataclasses import dataclass

import torch
from torch.distributed import ReduceOp

from superrl.ops._tp import all_reduce_, tp_rank, tp_size

IGNORE_INDEX = -100
# Elementwise work runs on row slices of about 2**21 values (8 MiB at fp32) with two scratch
# buffers of that size. Much smaller slices multiply the number of multi-threaded ops, whose
# start-up dominated on the busy 2-core box (2**20 was up to 2x slower in CPU time); 2**21 and
# 2**22 ran at the same speed, and the smaller one keeps the scratch below the logits gradient.
SLICE_ELEMENTS = 2 ** 21


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32 / bf16 / fp16 logits are reduced in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_slices(num_rows: int, rows_per_slice: int):
    for start in range(0, num_rows, rows_per_slice):
        yield slice(start, min(start + rows_per_slice, num_rows))


def _slices_with_scratch(logits: torch.Tensor, dtype: torch.dtype, num_buffers: int):
    """Yield (rows, buffers): cache-sized row slices of `logits` and `num_buffers` [rows, V/tp]
    scratch views. The scratch is allocated once per call, not per slice: fewer page faults and
    a steady resident peak."""
    num_rows, vocab_shard = logits.shape
    rows_per_slice = max(1, SLICE_ELEMENTS // vocab_shard)
    scratch = logits.new_empty((num_buffers, min(rows_per_slice, num_rows), vocab_shard), dtype=dtype)
    for rows in row_slices(num_rows, rows_per_slice):
        yield rows, scratch[:, :rows.stop - rows.start]


@dataclass(frozen=True)
class ShardTargets:
    """Where each token's global target id falls relative to this rank's vocab shard."""

    columns: torch.Tensor  # [T] long, clamped into [0, V/tp) so gathers/scatters stay in bounds
    is_local: torch.Tensor  # [T] bool: the target is a row of this rank's shard
    ignored: torch.Tensor  # [T] bool: target == IGNORE_INDEX

    @classmethod
    def build(cls, targets: torch.Tensor, vocab_shard: int, tp_group) -> "ShardTargets":
        local = targets.long() - tp_rank(tp_group) * vocab_shard
        is_local = (local >= 0) & (local < vocab_shard)  # IGNORE_INDEX is never local
        return cls(local.clamp(0, vocab_shard - 1), is_local, targets == IGNORE_INDEX)

    def rows(self, rows: slice) -> "ShardTargets":
        return ShardTargets(self.columns[rows], self.is_local[rows], self.ignored[rows])


def local_stats(logits: torch.Tensor, targets: ShardTargets, out: torch.Tensor) -> None:
    """Per row of `logits [c, V/tp]` write into `out [4, c]`: max z, sum e^(z-max),
    sum e^(z-max) (z-max), and the target logit (0 when the target is on another rank)."""
    for rows, (shifted, exp) in _slices_with_scratch(logits, out.dtype, num_buffers=2):
        z = logits[rows].to(out.dtype)
        row_max = z.amax(dim=1, keepdim=True)
        torch.sub(z, row_max, out=shifted)
        torch.exp(shifted, out=exp)
        out[0, rows] = row_max.squeeze(1)
        out[1, rows] = exp.sum(dim=1)
        # Summing e^(z-max) (z-max) rather than e^(z-max) z avoids cancelling two large sums:
        # entropy = log s - this / s stays accurate even for near one-hot distributions.
        # A batched row dot product needs no third [rows, V/tp] buffer.
        out[2, rows] = torch.bmm(exp.unsqueeze(1), shifted.unsqueeze(2)).view(-1)
        target = z.gather(1, targets.columns[rows].unsqueeze(1)).squeeze(1)
        out[3, rows] = torch.where(targets.is_local[rows], target, 0)


def _merge_over_ranks(stats: torch.Tensor, tp_group) -> torch.Tensor:
    """Re-centre each rank's partial sums on the global row max and add them up."""
    row_max, sum_exp, sum_exp_shifted, target_logit = stats
    global_max = all_reduce_(row_max.clone(), ReduceOp.MAX, tp_group)
    shift = row_max - global_max  # <= 0, so the rescale cannot overflow
    rescale = shift.exp()
    partial = torch.stack([sum_exp * rescale, (sum_exp_shifted + shift * sum_exp) * rescale,
                           target_logit])
    all_reduce_(partial, ReduceOp.SUM, tp_group)
    return torch.cat([global_max.unsqueeze(0), partial])


def outputs_from_stats(stats: torch.Tensor, targets: ShardTargets, tp_group):
    """[4, T] local partial sums -> (logprobs, entropy, log_normaliser), each [T].

    Ignored positions get log-prob 0 and entropy 0."""
    if tp_size(tp_group) > 1:
        stats = _merge_over_ranks(stats, tp_group)
    row_max, sum_exp, sum_exp_shifted, target_logit = stats
    log_sum_exp = sum_exp.log()
    log_normaliser = row_max + log_sum_exp
    entropy = log_sum_exp - sum_exp_shifted / sum_exp
    logprobs = torch.where(targets.ignored, 0, target_logit - log_normaliser)
    return logprobs, torch.where(targets.ignored, 0, entropy), log_normaliser


def upstream_grads(grad_logprobs, grad_entropy, targets: ShardTargets, dtype: torch.dtype):
    """Cast the [T] upstream grads (None = that output was unused) and zero them on ignored rows,
    whose outputs are constants."""
    def clean(grad):
        return None if grad is None else torch.where(targets.ignored, 0, grad.to(dtype))
    return clean(grad_logprobs), clean(grad_entropy)


def logits_grad_(logits, log_normaliser, entropy, grad_logprobs, grad_entropy,
                 targets: ShardTargets, out: torch.Tensor) -> None:
    """out <- dL/dz_v = g (1[v=y] - p_v) - e p_v (log p_v + H), in one pass per row slice.

    `out` may be `logits` itself (the fused-linear path recomputes the block and overwrites it).
    At least one of grad_logprobs (g) and grad_entropy (e) is not None."""
    dtype = log_normaliser.dtype
    in_place = out.dtype == dtype  # else work in `dtype` scratch and cast into `out`
    for rows, scratch in _slices_with_scratch(logits, dtype, num_buffers=1 if in_place else 2):
        dest = out[rows]
        work = dest if in_place else scratch[1]
        log_p = torch.sub(logits[rows].to(dtype), log_normaliser[rows].unsqueeze(1), out=work)
        p = torch.exp(log_p, out=scratch[0])
        if grad_entropy is None:
            torch.mul(p, grad_logprobs[rows].neg().unsqueeze(1), out=work)
        else:
            # -p (g + e (log p + H)) = p * (log p * (-e) - (e H + g)): one addcmul, one mul.
            offset = grad_entropy[rows] * entropy[rows]
            if grad_logprobs is not None:
                offset = offset + grad_logprobs[rows]
            torch.addcmul(offset.neg().unsqueeze(1), log_p, grad_entropy[rows].neg().unsqueeze(1),
                          out=work)
            work.mul_(p)
        if grad_logprobs is not None:
            _add_target_term_(work, grad_logprobs[rows], targets.rows(rows))
        if work is not dest:
            dest.copy_(work)


def _add_target_term_(grad: torch.Tensor, grad_logprobs, targets: ShardTargets) -> None:
    """grad[t, y_t] += g_t where y_t is on this rank; a scatter of zeros elsewhere, so no
    data-dependent indexing (no host sync on GPU)."""
    values = torch.where(targets.is_local, grad_logprobs, 0).unsqueeze(1)
    grad.scatter_add_(1, targets.columns.unsqueeze(1), values)
