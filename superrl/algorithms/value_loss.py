"""PPO's clipped value loss (Schulman et al. 2017, arXiv 1707.06347; the clipped form of
OpenAI baselines' ppo2, as verl writes it):

    V_clip = clip(V, V_old - c, V_old + c)
    loss_t = 0.5 * max((V - G)^2, (V_clip - G)^2)

V the critic's current value, V_old its value when the batch was rolled out, G the GAE return,
c = `critic.cliprange_value`. The per-token loss is aggregated like every other loss term
(policy_loss.aggregate with the step's DP-global token/sequence counts).
"""
from typing import NamedTuple

import torch


class ValueTokenLoss(NamedTuple):
    loss: torch.Tensor  # [B, T] differentiable per-token loss (unmasked)
    clipped: torch.Tensor  # [B, T] bool: the clipped branch is the larger one (its gradient is zero)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       cliprange: float) -> ValueTokenLoss:
    """values [B, T] (requires grad), old_values, returns [B, T] (detached here)."""
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + (values - old_values).clamp(-cliprange, cliprange)
    unclipped_loss = (values - returns).square()
    clipped_loss = (clipped_values - returns).square()
    return ValueTokenLoss(0.5 * torch.maximum(unclipped_loss, clipped_loss), clipped_loss > unclipped_loss)
