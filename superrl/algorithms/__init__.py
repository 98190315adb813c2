"""Pure-torch RL building blocks of SuperRL: advantages, policy / SFT / KL losses with DP-global
aggregation, the Adaptive Switch and the Hybrid Actor weighting. See hybrid.py for the call sequence.
"""
from superrl.algorithms.advantages import (compute_advantages, grpo_advantages, reinforce_pp_advantages,
                                           rloo_advantages)
from superrl.algorithms.config import AlgorithmConfig, HybridConfig, SwitchConfig
from superrl.algorithms.counts import TokenCounts, all_reduce_sum, global_token_counts, global_token_mean
from superrl.algorithms.hybrid import (ExpertTokens, LogSigmaWeights, LossScales, RolloutTokens,
                                       build_loss_scales, hybrid_loss)
from superrl.algorithms.kl import kl_penalized_rewards, kl_per_token
from superrl.algorithms.policy_loss import PPOTokenLoss, aggregate, ppo_clip_loss, row_reduce
from superrl.algorithms.sft_loss import sft_loss
from superrl.algorithms.switch import AdaptiveSwitch, SwitchDecision

__all__ = [
    "AdaptiveSwitch", "AlgorithmConfig", "ExpertTokens", "HybridConfig", "LogSigmaWeights",
    "LossScales", "PPOTokenLoss", "RolloutTokens", "SwitchConfig", "SwitchDecision", "TokenCounts",
    "aggregate", "all_reduce_sum", "build_loss_scales", "compute_advantages",
    "global_token_counts", "global_token_mean", "grpo_advantages", "hybrid_loss",
    "kl_penalized_rewards", "kl_per_token", "ppo_clip_loss", "reinforce_pp_advantages",
    "rloo_advantages", "row_reduce", "sft_loss",
]
