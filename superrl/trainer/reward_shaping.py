"""The rewards the advantages see. The task reward (what the reward functions scored: `reward/*`
logs it, and the Adaptive Switch gates on it: docs/policy_losses.md) plus DAPO's overlong penalty
(`reward.overlong_buffer_len`, algorithms/overlong.py), then each feature's reward shaping (the KL
in the reward: reference_kl.py)."""
import torch
from megatron.core import parallel_state as mpu

from superrl.algorithms.counts import all_reduce_sum, count_vector
from superrl.algorithms.overlong import overlong_penalty
from superrl.config import Config


def shaped_rewards(config: Config, rollouts, rows, features: list, model, pack) -> tuple:
    """(rewards [P, K], metrics); `rollouts.rewards` itself when nothing shapes them. `rows`,
    `model` and `pack` as TrainerFeature.shape_rewards takes them. Collective over the world."""
    rewards, metrics = rollouts.rewards, {}
    if config.reward.overlong_buffer_len > 0:
        lengths = torch.tensor([[len(ids) for ids in group] for group in rollouts.response_ids])
        penalty = overlong_penalty(lengths, config.rollout.max_tokens, config.reward.overlong_buffer_len,
                                   config.reward.overlong_penalty)
        rewards = rewards + penalty.to(rewards.dtype)
        total, responses = all_reduce_sum(count_vector(penalty.sum(), penalty.numel()),
                                          mpu.get_data_parallel_group()).tolist()
        metrics["reward/overlong_penalty_mean"] = total / responses
    for feature in features:
        rewards, feature_metrics = feature.shape_rewards(rewards, rows, model, pack)
        metrics.update(feature_metrics)
    return rewards, metrics
