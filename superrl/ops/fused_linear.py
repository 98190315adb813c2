"""Output projection fused with log-prob/entropy: hidden [T, h] @ weight[V/tp, h].T is computed
one token chunk at a time, so [T, V/tp] logits never exist; the backward recomputes each chunk.

The GEMMs are delegated to a projection object (`DenseProjection` here, the FP8 one in
`superrl.ops.fp8_projection`) so every precision shares the same chunk loop and softmax math.
"""
from typing import NamedTuple

import torch
from torch.distributed import ReduceOp

from superrl.ops._softmax_chunks import (ShardTargets, accumulation_dtype, local_stats,
                                         logits_grad_, outputs_from_stats, row_slices,
                                         upstream_grads)
from superrl.ops._tp import all_reduce_, tp_size
from superrl.ops._validation import check_linear_inputs, check_target_range

# Default chunk: 512 tokens, capped at MAX_CHUNK_BYTES of logits (441 rows at V/tp = 151936). The
# chunk GEMMs' speed depends on the row count: fused fwd+bwd at T = 2048, h = 896 on the CPU box took
# 2.75 / 2.61 / 2.45 / 2.46 s at 128 / 256 / 512 / 1024 rows (V/tp = 32000), and 12.9 / 12.4 s at
# 256 / 441 rows (V/tp = 151936). 512 rows of logits are 65 MB at V/tp = 32000.
DEFAULT_CHUNK_TOKENS = 512
MAX_CHUNK_BYTES = 256 * 2 ** 20
_MIN_CHUNK_TOKENS = 16


def default_chunk_size(vocab_shard: int, dtype: torch.dtype) -> int:
    row_bytes = vocab_shard * torch.finfo(accumulation_dtype(dtype)).bits // 8
    return max(_MIN_CHUNK_TOKENS, min(DEFAULT_CHUNK_TOKENS, MAX_CHUNK_BYTES // row_bytes))


def accumulate_matmul_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b, in place when the dtypes allow (no [V/tp, h] temporary)."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    else:
        out.add_(a @ b)


class DenseProjection:
    """The output GEMM in the weight's own dtype (fp32/fp64, or bf16/fp16 with fp32 softmax)."""

    def prepare(self, hidden, weight):
        """Tensors the chunk GEMMs read; they are saved for the backward."""
        return hidden, weight

    def logits(self, operands, rows: slice, out: torch.Tensor) -> torch.Tensor:
        """The [c, V/tp] logits block of token rows `rows`, written into `out` (and returned)."""
        hidden, weight = operands
        if out.dtype == weight.dtype:
            return torch.mm(hidden[rows], weight.t(), out=out)
        return out.copy_(hidden[rows] @ weight.t())  # half-precision GEMM, float32 softmax

    def backward(self, operands, rows: slice, grad_logits, grad_hidden_rows, grad_weight) -> None:
        """grad_hidden_rows <- dz @ W (this rank's part); grad_weight += dz.T @ hidden[rows]."""
        hidden, weight = operands
        grad_logits = grad_logits.to(weight.dtype)
        if grad_hidden_rows is not None:
            torch.mm(grad_logits, weight, out=grad_hidden_rows)
        if grad_weight is not None:
            accumulate_matmul_(grad_weight, grad_logits.t(), hidden[rows])

    def finish_backward(self) -> None:
        """Hook for per-step state (FP8 amax bookkeeping); nothing to do in plain precision."""


class _TensorSpec(NamedTuple):
    """What the backward needs to allocate a gradient, without keeping the tensor alive."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def _rows_of(vector, rows: slice):
    return None if vector is None else vector[rows]


class _ChunkedLinearLogprobsEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, tp_group, chunk_size, projection):
        dtype = accumulation_dtype(weight.dtype)
        shard_targets = ShardTargets.build(targets, weight.shape[0], tp_group)
        operands = projection.prepare(hidden, weight)
        stats = hidden.new_empty((4, hidden.shape[0]), dtype=dtype)
        block = _logits_buffer(hidden.shape[0], chunk_size, weight, dtype)
        for rows in row_slices(hidden.shape[0], chunk_size):
            logits = projection.logits(operands, rows, block[:rows.stop - rows.start])
            local_stats(logits, shard_targets.rows(rows), stats[:, rows])
        logprobs, entropy, log_normaliser = outputs_from_stats(stats, shard_targets, tp_group)
        ctx.save_for_backward(*operands, log_normaliser, entropy)
        ctx.shard_targets, ctx.tp_group, ctx.chunk_size = shard_targets, tp_group, chunk_size
        ctx.projection = projection
        ctx.hidden_spec = _TensorSpec(hidden.shape, hidden.dtype, hidden.device)
        ctx.weight_spec = _TensorSpec(weight.shape, weight.dtype, weight.device)
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        if grad_logprobs is None and grad_entropy is None:
            return (None,) * 6
        *operands, log_normaliser, entropy = ctx.saved_tensors
        grad_logprobs, grad_entropy = upstream_grads(grad_logprobs, grad_entropy,
                                                     ctx.shard_targets, log_normaliser.dtype)
        grad_hidden, grad_weight = _grad_buffers(ctx, log_normaliser.dtype)
        num_tokens = ctx.hidden_spec.shape[0]
        block = _logits_buffer(num_tokens, ctx.chunk_size, ctx.weight_spec, log_normaliser.dtype)
        for rows in row_slices(num_tokens, ctx.chunk_size):
            logits = ctx.projection.logits(operands, rows, block[:rows.stop - rows.start])
            logits_grad_(logits, log_normaliser[rows], entropy[rows], _rows_of(grad_logprobs, rows),
                         _rows_of(grad_entropy, rows), ctx.shard_targets.rows(rows), out=logits)
            ctx.projection.backward(operands, rows, logits, _rows_of(grad_hidden, rows), grad_weight)
        ctx.projection.finish_backward()
        if grad_hidden is not None:
            # hidden is replicated over TP: each rank holds the part from its vocab shard only
            # (the backward of megatron's copy_to_tensor_model_parallel_region).
            all_reduce_(grad_hidden, ReduceOp.SUM, ctx.tp_group)
        if grad_weight is not None:
            grad_weight = grad_weight.to(ctx.weight_spec.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def _logits_buffer(num_tokens: int, chunk_size: int, weight, dtype) -> torch.Tensor:
    """One [chunk, V/tp] block reused by every chunk: a fresh one per chunk is a fresh mmap (glibc
    maps allocations this large) whose page faults cost ~10% of the fused-linear step on CPU."""
    return torch.empty((min(chunk_size, num_tokens), weight.shape[0]), dtype=dtype, device=weight.device)


def _grad_buffers(ctx, dtype):
    """Uninitialised dhidden (every row is written once) and a zeroed accumulator for dweight."""
    hidden, weight = ctx.hidden_spec, ctx.weight_spec
    grad_hidden = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    if ctx.needs_input_grad[1]:
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device)
    return grad_hidden, grad_weight


def chunked_linear_logprobs_and_entropy(projection, hidden, weight, targets, tp_group=None,
                                        chunk_size=None):
    """`fused_linear_logprobs_and_entropy` with an explicit projection (dense or FP8)."""
    check_linear_inputs(hidden, weight, targets, chunk_size)
    check_target_range(targets, weight.shape[0] * tp_size(tp_group))
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0], weight.dtype)
    return _ChunkedLinearLogprobsEntropy.apply(hidden, weight, targets, tp_group, chunk_size,
                                               projection)


def fused_linear_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                                      targets: torch.Tensor, tp_group=None, chunk_size=None):
    """Log-probabilities of `targets` and entropies ([T] each) of softmax(hidden @ weight.T).

    hidden: [T, h], replicated over the TP group (the gradient is all-reduced over tp_group, so
    do not also route it through megatron's copy_to_tensor_model_parallel_region).
    weight: this rank's output-layer shard [V/tp, h]. targets: global ids [T], -100 = ignored.
    chunk_size: tokens per chunk; default 512 (`default_chunk_size`). Peak extra
    memory is one chunk of logits plus the [V/tp, h] weight gradient, whatever T is.
    """
    return chunked_linear_logprobs_and_entropy(DenseProjection(), hidden, weight, targets,
                                               tp_group, chunk_size)
