"""Per-token policy losses (`algorithm.policy_loss`: PPO-clip, GSPO, CISPO) and the loss
aggregation shared by every term. Equations and the differences from the papers:
docs/policy_losses.md.

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
class PolicyTokenLoss:
    """Per-token policy-loss terms, all `[B, T]` and unmasked (apply the mask when aggregating)."""
    loss: torch.Tensor          # differentiable per-token loss
    clipped: torch.Tensor       # bool: the clip is active (PPO/GSPO: zero gradient; CISPO: weight clipped)
    dual_clipped: torch.Tensor  # bool: the dual-clip cap -A * c is active (ppo_clip only)
    ratio: torch.Tensor         # detached ratio the clip acts on (token, or GSPO's sequence ratio)


def _column(advantages: torch.Tensor) -> torch.Tensor:
    """Detached advantages as [B, T] or [B, 1] (one per response, broadcast to its tokens)."""
    return (advantages[:, None] if advantages.dim() == 1 else advantages).detach()


def _token_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    return (logprobs - old_logprobs.detach()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)


def _clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float,
                      dual_clip: Optional[float] = None) -> PolicyTokenLoss:
    """max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) per token for a differentiable ratio r.

    With `dual_clip = c > 1`, tokens with A < 0 are further capped at -A * c, so a huge ratio on a
    negative-advantage token cannot blow up the loss (Ye et al. 2020).
    """
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip={dual_clip!r} must be None or > 1")
    advantages = _column(advantages)
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
    return PolicyTokenLoss(loss=loss, clipped=is_clipped, dual_clipped=is_dual_clipped,
                           ratio=ratio.detach())


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  clip_low: float, clip_high: float,
                  dual_clip: Optional[float] = None) -> PolicyTokenLoss:
    """PPO-clip on the token ratio r_t = pi_theta(y_t) / pi_old(y_t) (_clipped_surrogate).

    logprobs [B, T] (requires grad), old_logprobs [B, T], advantages [B, T] or [B] (broadcast).
    """
    ratio = torch.exp(_token_log_ratio(logprobs, old_logprobs))
    return _clipped_surrogate(ratio, advantages, clip_low, clip_high, dual_clip)


def gspo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_low: float, clip_high: float) -> PolicyTokenLoss:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071) in its token form ("GSPO-token").

    The ratio is the sequence's length-normalised likelihood ratio
        s_i = exp(1/|y_i| sum_t log(pi_theta(y_it) / pi_old(y_it)))
    and each token carries s_it = sg[s_i] * pi_theta(y_it) / sg[pi_theta(y_it)]: its value is s_i
    (so the clip acts on the whole sequence at once) and its gradient s_i * grad log pi_theta(y_it).
    With one advantage per response and `seq_mean_token_mean` this is the paper's sequence objective
    exactly, gradient included. mask [B, T] selects the response tokens of the mean.
    """
    seq_log_ratio = row_reduce(_token_log_ratio(logprobs, old_logprobs).detach(), mask, "seq_mean_token_mean")
    ratio = torch.exp(logprobs - logprobs.detach() + seq_log_ratio[:, None])
    return _clipped_surrogate(ratio, advantages, clip_low, clip_high)


def cispo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
               clip_low: float, clip_high: float) -> PolicyTokenLoss:
    """CISPO (MiniMax-M1, arXiv 2506.13585): -sg(clip(r_t, 1 - clip_low, 1 + clip_high)) A log pi_theta(y_t).

    The importance weight is clipped and detached instead of the update: every token keeps its
    gradient -w_t A grad log pi_theta(y_t), clipped ones included (PPO drops theirs).
    """
    ratio = torch.exp(_token_log_ratio(logprobs, old_logprobs)).detach()
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = -_column(advantages) * weight * logprobs
    return PolicyTokenLoss(loss=loss, clipped=weight != ratio,
                           dual_clipped=torch.zeros_like(ratio, dtype=torch.bool), ratio=ratio)


def policy_token_loss(cfg, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor) -> PolicyTokenLoss:
    """The loss `cfg.policy_loss` names (an AlgorithmConfig, checked when the config is loaded)."""
    losses = {
        "ppo_clip": lambda: ppo_clip_loss(logprobs, old_logprobs, advantages, cfg.clip_low, cfg.clip_high,
                                          cfg.dual_clip),
        "gspo": lambda: gspo_loss(logprobs, old_logprobs, advantages, mask, cfg.clip_low, cfg.clip_high),
        "cispo": lambda: cispo_loss(logprobs, old_logprobs, advantages, cfg.clip_low, cfg.clip_high),
    }
    return losses[cfg.policy_loss]()  # exhaustive: an unknown name is a KeyError, never another loss
