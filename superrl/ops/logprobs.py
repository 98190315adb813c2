"""Per-token log pi(target) and entropy from vocab-parallel logits, without [T, V] temporaries.

Memory: besides the caller's logits, the forward keeps two [T] vectors; the backward writes the
[T, V/tp] gradient directly, recomputing the softmax slice by slice.
"""
import torch

from superrl.ops._softmax_chunks import (ShardTargets, accumulation_dtype, local_stats,
                                         logits_grad_, outputs_from_stats, upstream_grads)
from superrl.ops._tp import tp_size
from superrl.ops._validation import check_logits_inputs, check_target_range


class _LogprobsEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, tp_group):
        shard_targets = ShardTargets.build(targets, logits.shape[1], tp_group)
        stats = logits.new_empty((4, logits.shape[0]), dtype=accumulation_dtype(logits.dtype))
        local_stats(logits, shard_targets, stats)
        logprobs, entropy, log_normaliser = outputs_from_stats(stats, shard_targets, tp_group)
        ctx.save_for_backward(logits, log_normaliser, entropy)
        ctx.shard_targets = shard_targets
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        if grad_logprobs is None and grad_entropy is None:
            return None, None, None
        logits, log_normaliser, entropy = ctx.saved_tensors
        grad_logprobs, grad_entropy = upstream_grads(grad_logprobs, grad_entropy,
                                                     ctx.shard_targets, log_normaliser.dtype)
        grad_logits = torch.empty_like(logits)
        logits_grad_(logits, log_normaliser, entropy, grad_logprobs, grad_entropy,
                     ctx.shard_targets, out=grad_logits)
        return grad_logits, None, None


def logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor, tp_group=None):
    """Log-probabilities of `targets` and softmax entropies, both [T].

    logits: this rank's vocab shard [T, V/tp] (rank r holds global ids [r V/tp, (r+1) V/tp)).
    targets: global token ids [T]; -100 marks an ignored position (outputs 0, zero gradient).
    tp_group: the tensor-parallel group the vocab is split over; None = no tensor parallelism.
    float64 logits are computed in float64, every other float dtype in float32 (the outputs'
    dtype); the gradient has the logits' dtype.
    """
    check_logits_inputs(logits, targets)
    check_target_range(targets, logits.shape[1] * tp_size(tp_group))
    return _LogprobsEntropy.apply(logits, targets, tp_group)
