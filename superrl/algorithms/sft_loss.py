"""Supervised loss on offline expert trajectories y*: NLL of y*'s tokens under pi_theta.

Same shapes, masking and global-denominator aggregation as the policy loss (see policy_loss.py):
with the default `token_mean` it is the token-mean NLL of y* over the whole global batch.
"""
from typing import Union

import torch

from superrl.algorithms.policy_loss import aggregate


def sft_loss(expert_logprobs: torch.Tensor, expert_mask: torch.Tensor, loss_agg: str,
             denom: Union[float, torch.Tensor]) -> torch.Tensor:
    """This micro-batch's share of the expert NLL.

    expert_logprobs [Be, Te]: log pi_theta(y*_t | x, y*_<t), differentiable.
    expert_mask [Be, Te]: 1 on y* tokens (0 on prompt tokens and padding).
    denom: global normaliser over the expert rows of the step, e.g.
        `global_token_counts(expert_mask, group).denominator(loss_agg)`, or [Be] per-row.
    """
    return aggregate(-expert_logprobs, expert_mask, loss_agg, denom)
