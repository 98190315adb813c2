"""PPO-clip policy loss (clip-higher, dual-clip) and the loss aggregation shared by every term.

Shapes: per-token tensors are `[B, T]` (B sequences of one micro-batch, right-padded to T) with a
`mask [B, T]` that is 1 on the tokens that count (response tokens, or expert tokens y*).

Aggregation with global denominators
------------------------------------
`aggregate(values, mask, loss_agg, denom)` returns this micro-batch's *share* of the full-batch
loss: sum_b row(b) / denom, where `row(b)` is the token sum (`token_mean`, `seq_mean_token_sum`)
or token mean (`seq_mean_token_mean`) of row b, and `denom` is the GLOBAL normaliser of the
optimizer step (all micro-batches, all DP ranks):

    token_mean           denom = number of valid tokens in the global batch
    seq_mean_token_sum   denom = number of non-empty sequences in the global batch
    seq_mean_token_mean  denom = number of non-empty sequences in the global batch

`counts.global_token_counts(mask, group).denominator(loss_agg)` computes it with one all-reduce.
Summing the shares over micro-batches and over DP ranks then gives exactly the full-batch mean.
`denom` may also be a per-row tensor `[B]` (the per-prompt normalisers of the `hard_gate` hybrid).
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch

# exp() of a log-ratio above this overflows float32 long before it means anything; the clamp only
# touches tokens whose ratio is clipped anyway (verl does the same).
_MAX_LOG_RATIO = 20.0


def row_reduce(values: torch.Tensor, mask: torch.Tensor, loss_agg: str) -> torch.Tensor:
    """[B, T] -> [B]: masked token sum, or masked token mean for `seq_mean_token_mean`. `loss_agg`
    is one of config.LOSS_AGG_MODES (algorithm.loss_agg, checked when the config is loaded)."""
    mask = mask.to(values.dtype)
    row_sum = (values * mask).sum(dim=-1)
    if loss_agg == "seq_mean_token_mean":
        return row_sum / mask.sum(dim=-1).clamp(min=1)
    return row_sum


def aggregate(values: torch.Tensor, mask: torch.Tensor, loss_agg: str,
              denom: Union[float, torch.Tensor]) -> torch.Tensor:
    """This micro-batch's share of the globally normalised aggregate (see module docstring).

    values, mask: [B, T]; denom: float, or [B] per-row denominators. Denominators are counts and
    are clamped to >= 1 so an all-empty global batch gives 0 instead of NaN.
    """
    rows = row_reduce(values, mask, loss_agg)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(rows.dtype).clamp(min=1)
    else:
        denom = max(float(denom), 1.0)
    return (rows / denom).sum()


@dataclass
class PPOTokenLoss:
    """Per-token PPO terms, all `[B, T]` and unmasked (apply the mask when aggregating)."""
    loss: torch.Tensor          # differentiable per-token loss
    clipped: torch.Tensor       # bool: the ratio clip is active (its gradient is zero)
    dual_clipped: torch.Tensor  # bool: the dual-clip cap -A * c is active
    ratio: torch.Tensor         # detached pi_theta / pi_old


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  clip_low: float, clip_high: float,
                  dual_clip: Optional[float] = None) -> PPOTokenLoss:
    """PPO-clip loss per token: max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)).

    With `dual_clip = c > 1`, tokens with A < 0 are further capped at -A * c, so a huge ratio on a
    negative-advantage token cannot blow up the loss (Ye et al. 2020).

    logprobs [B, T] (requires grad), old_logprobs [B, T], advantages [B, T] or [B] (broadcast).
    """
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip={dual_clip!r} must be None or > 1")
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    advantages = advantages.detach()
    log_ratio = (logprobs - old_logprobs.detach()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if dual_clip is None:
        is_dual_clipped = torch.zeros_like(is_clipped)
    else:
        cap = -advantages * dual_clip
        is_dual_clipped = (advantages < 0) & (loss > cap)
        loss = torch.where(is_dual_clipped, cap.expand_as(loss), loss)
    return PPOTokenLoss(loss=loss, clipped=is_clipped, dual_clipped=is_dual_clipped,
                        ratio=ratio.detach())
