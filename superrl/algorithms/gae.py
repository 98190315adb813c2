"""Generalized Advantage Estimation (Schulman et al. 2015, arXiv 1506.02438) over response tokens.

Shapes: `[B, T]` per-token tensors with a `mask [B, T]` that is 1 on the response tokens of row b
(contiguous, anywhere in the row: the trainer's rows put them after the prompt). V_t is the
critic's value at the position that predicts response token t (the same position as the policy's
log-prob of that token).

Token rewards: the outcome reward R_b sits on the row's last response token; with a per-token KL
in the reward every token also pays beta * KL_t:

    r_t = R * 1[t = last] - beta * KL_t

GAE, with V after the last response token = 0 (the episode ends there):

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * A_{t+1}
    G_t     = A_t + V_t            (the critic's regression target, "returns")

Positions off the mask are skipped (the recursion carries V_{t+1} and A_{t+1} across them) and
come out 0. Computed in float64 so that a long response does not accumulate float32 round-off.
"""
from typing import NamedTuple, Optional

import torch

from superrl.algorithms.counts import ProcessGroup, all_reduce_sum, count_vector


class GAEResult(NamedTuple):
    advantages: torch.Tensor  # [B, T], 0 off the mask
    returns: torch.Tensor  # [B, T], 0 off the mask


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor, token_kl: Optional[torch.Tensor] = None,
                          kl_coef: float = 0.0) -> torch.Tensor:
    """[B, T] float64 token rewards: `rewards [B]` on each row's last response token, minus
    kl_coef * token_kl on every response token. A row without response tokens gets none."""
    mask = mask.to(torch.float64)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, -1).amax(dim=1)  # -1: no response token
    token_rewards = torch.zeros_like(mask)
    has_tokens = last >= 0
    rows = has_tokens.nonzero().squeeze(1)
    token_rewards[rows, last[rows]] = rewards.to(torch.float64)[rows]
    if token_kl is not None:
        token_rewards = token_rewards - kl_coef * token_kl.detach().to(torch.float64) * mask
    return token_rewards


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> GAEResult:
    """Advantages and returns [B, T] (float64) by the backward recursion of the module docstring."""
    mask = mask.to(torch.float64)
    rewards, values = token_rewards.to(torch.float64), values.detach().to(torch.float64) * mask
    next_value = torch.zeros(mask.shape[0], dtype=torch.float64, device=mask.device)
    next_advantage = torch.zeros_like(next_value)
    advantages = torch.zeros_like(mask)
    for t in reversed(range(mask.shape[1])):
        valid = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * valid
        # off the mask the recursion passes through unchanged
        next_value = torch.where(valid > 0, values[:, t], next_value)
        next_advantage = torch.where(valid > 0, advantage, next_advantage)
    return GAEResult(advantages, (advantages + values) * mask)


def whiten(values: torch.Tensor, mask: torch.Tensor, group: ProcessGroup = None, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked tokens of the DP-GLOBAL batch (verl's
    masked_whiten), from all-reduced SUMs of (count, sum x, sum x^2); unbiased variance. 0 off
    the mask. float64 in and out."""
    mask = mask.to(torch.float64)
    x = values.to(torch.float64) * mask
    count, total, total_sq = all_reduce_sum(count_vector(mask.sum(), x.sum(), x.square().sum()), group).tolist()
    if count == 0:
        return torch.zeros_like(x)
    mean = total / count
    # max() guards the tiny negative values of cancellation
    var = max(total_sq - count * mean * mean, 0.0) / max(count - 1.0, 1.0)
    return (x - mean) / (var + eps) ** 0.5 * mask
