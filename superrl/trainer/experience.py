"""Rollout phase of a step: generate K responses per prompt, score them, share the result.

Only the engine-owning rank of each model-parallel group (tp_rank 0, pp_rank 0) generates and
scores; the result is broadcast to the rest of its TP x PP group, so every rank of a DP replica
trains on identical data without running the engine or the reward functions again.
"""
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.rollout import SamplingParams


@dataclass
class Rollouts:
    response_ids: list  # [P][K] token ids of each response
    finish_reasons: list  # [P][K]
    logprobs: list  # [P][K] the engine's log-prob of each response token (temperature 1, unfiltered)
    rewards: torch.Tensor  # [P, K] float64
    reward_metrics: dict  # local counts, e.g. reward/errors


def sampling_params(rollout_cfg, seed: int, eos_token_id: int) -> SamplingParams:
    return SamplingParams(
        n=rollout_cfg.n, temperature=rollout_cfg.temperature,
        top_p=rollout_cfg.top_p, top_k=rollout_cfg.top_k, max_tokens=rollout_cfg.max_tokens,
        stop_token_ids=[eos_token_id], seed=seed)


def generate_and_score(engine, tokenizer, scorer, examples: list, params: SamplingParams,
                       prompt_index_offset: int = 0) -> Rollouts:
    completions = engine.generate([ex.prompt_ids for ex in examples], params,
                                  prompt_index_offset=prompt_index_offset)
    texts, truths, sources = [], [], []
    for ex, group in zip(examples, completions):
        for completion in group:
            texts.append(tokenizer.decode(completion.token_ids, skip_special_tokens=True))
            truths.append(ex.ground_truth)
            sources.append(ex.data_source)
    scored = scorer.score(texts, truths, sources)
    k = params.n
    rewards = torch.tensor(scored.scores, dtype=torch.float64).view(len(examples), k)
    return Rollouts(
        response_ids=[[list(c.token_ids) for c in group] for group in completions],
        finish_reasons=[[c.finish_reason for c in group] for group in completions],
        logprobs=[[list(c.logprobs) for c in group] for group in completions],
        rewards=rewards, reward_metrics=scored.metrics())


def owns_engine() -> bool:
    return mpu.get_tensor_model_parallel_rank() == 0 and mpu.get_pipeline_model_parallel_rank() == 0


def share_with_model_parallel_group(rollouts):
    """Broadcast the engine rank's Rollouts (None elsewhere) to its whole TP x PP group."""
    group = mpu.get_model_parallel_group()
    if dist.get_world_size(group) == 1:
        return rollouts
    box = [rollouts]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    return box[0]
