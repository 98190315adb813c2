"""Pure-torch RL building blocks of SuperRL: advantages, reward shaping, policy / SFT / KL losses
with DP-global aggregation, rollout correction, the Adaptive Switch and the Hybrid Actor weighting.
See hybrid.py for the call sequence.
"""
from superrl.algorithms.advantages import (compute_advantages, grpo_advantages, reinforce_pp_advantages,
                                           rloo_advantages)
from superrl.algorithms.config import AlgorithmConfig, HybridConfig, SwitchConfig
from superrl.algorithms.counts import TokenCounts, all_reduce_sum, global_token_counts, global_token_mean
from superrl.algorithms.hybrid import (ExpertTokens, LogSigmaWeights, LossScales, RolloutTokens,
                                       build_loss_scales, hybrid_loss)
from superrl.algorithms.kl import kl_penalized_rewards, kl_per_token
from superrl.algorithms.overlong import overlong_penalty
from superrl.algorithms.policy_loss import (PolicyTokenLoss, aggregate, cispo_loss, gspo_loss, policy_token_loss,
                                            ppo_clip_loss, row_reduce)
from superrl.algorithms.rollout_correction import correction_metrics, correction_weights
from superrl.algorithms.sft_loss import sft_loss
from superrl.algorithms.switch import AdaptiveSwitch, SwitchDecision

__all__ = [
    "AdaptiveSwitch", "AlgorithmConfig", "ExpertTokens", "HybridConfig", "LogSigmaWeights",
    "LossScales", "PolicyTokenLoss", "RolloutTokens", "SwitchConfig", "SwitchDecision", "TokenCounts",
    "aggregate", "all_reduce_sum", "build_loss_scales", "cispo_loss", "compute_advantages",
    "correction_metrics", "correction_weights", "global_token_counts", "global_token_mean",
    "grpo_advantages", "gspo_loss", "hybrid_loss", "kl_penalized_rewards", "kl_per_token",
    "overlong_penalty", "policy_token_loss", "ppo_clip_loss", "reinforce_pp_advantages",
    "rloo_advantages", "row_reduce", "sft_loss",
]
