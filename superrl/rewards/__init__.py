"""Reward functions (gsm8k, math, hotpotqa), per-source dispatch and isolated batch scoring.

``superrl.rewards.math`` (math-verify, sympy) is not imported here: it loads on first use.
"""
from superrl.rewards.registry import (DEFAULT_REWARD_FUNCTIONS, RewardFunctionError, load_reward_function,
                                      resolve_reward_specs, reward_spec_for)
from superrl.rewards.scorer import RewardBatch, RewardScorer

__all__ = ["DEFAULT_REWARD_FUNCTIONS", "RewardBatch", "RewardFunctionError", "RewardScorer", "load_reward_function",
           "resolve_reward_specs", "reward_spec_for"]
