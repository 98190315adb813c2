"""Rollout phase of a step: generate K responses per prompt on the engine replicas, score them on
each replica's first rank, and give every trainer rank its data-parallel slice
(rollout_placement.py says which rank does what)."""
from dataclasses import dataclass

import torch

from superrl.distributed import ParallelContext
from superrl.rollout import SamplingParams
from superrl.trainer.rollout_placement import EnginePlacement, all_gather_rollouts, data_parallel_slice


@dataclass
class Rollouts:
    response_ids: list  # [P][K] token ids of each response
    finish_reasons: list  # [P][K]
    logprobs: list  # [P][K] the engine's log-prob of each response token (temperature 1, unfiltered)
    rewards: torch.Tensor  # [P, K] float64
    reward_metrics: dict  # counts, e.g. reward/errors (summed over data-parallel ranks when logged)

    def prompts(self, part: slice, with_reward_metrics: bool) -> "Rollouts":
        """The rollouts of prompts `part`; the reward counts go with one slice only, so that their
        sum over data-parallel ranks counts each once."""
        return Rollouts(self.response_ids[part], self.finish_reasons[part], self.logprobs[part],
                        self.rewards[part], self.reward_metrics if with_reward_metrics else {})


def concat_rollouts(parts: list) -> Rollouts:
    counts = {}
    for part in parts:
        for key, value in part.reward_metrics.items():
            counts[key] = counts.get(key, 0.0) + value
    return Rollouts([ids for p in parts for ids in p.response_ids], [r for p in parts for r in p.finish_reasons],
                    [lp for p in parts for lp in p.logprobs], torch.cat([p.rewards for p in parts]), counts)


def sampling_params(rollout_cfg, seed: int, eos_token_id: int) -> SamplingParams:
    return SamplingParams(
        n=rollout_cfg.n, temperature=rollout_cfg.temperature,
        top_p=rollout_cfg.top_p, top_k=rollout_cfg.top_k, max_tokens=rollout_cfg.max_tokens,
        stop_token_ids=[eos_token_id], seed=seed)


def score(tokenizer, scorer, examples: list, completions: list, n: int) -> Rollouts:
    texts, truths, sources = [], [], []
    for ex, group in zip(examples, completions):
        for completion in group:
            texts.append(tokenizer.decode(completion.token_ids, skip_special_tokens=True))
            truths.append(ex.ground_truth)
            sources.append(ex.data_source)
    scored = scorer.score(texts, truths, sources)
    rewards = torch.tensor(scored.scores, dtype=torch.float64).view(len(examples), n)
    return Rollouts(
        response_ids=[[list(c.token_ids) for c in group] for group in completions],
        finish_reasons=[[c.finish_reason for c in group] for group in completions],
        logprobs=[[list(c.logprobs) for c in group] for group in completions],
        rewards=rewards, reward_metrics=scored.metrics())


def generate_and_score(engine, tokenizer, scorer, examples: list, params: SamplingParams,
                       placement: EnginePlacement, ctx: ParallelContext) -> Rollouts:
    """Collective over the world: this data-parallel rank's rollouts of the step's `examples` (the
    same global list on every rank)."""
    part = placement.prompt_slice(len(examples))
    mine = None
    if placement.runs_engine and part.stop > part.start:
        completions = engine.generate([ex.prompt_ids for ex in examples[part]], params,
                                      prompt_index_offset=part.start)
        if placement.scores:
            mine = score(tokenizer, scorer, examples[part], completions, params.n)
    step_rollouts = concat_rollouts(all_gather_rollouts(mine, placement))
    return step_rollouts.prompts(data_parallel_slice(len(examples), ctx), with_reward_metrics=ctx.dp_rank == 0)
