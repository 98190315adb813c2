"""A step's rows as PPO mini-batches (one optimizer step each), and which rows carry gradient.

Mini-batch m takes local prompts [m P/M, (m+1) P/M) of every DP rank (P local prompts, M =
`algorithm.ppo_mini_batches`), so every rank splits alike and each global mini-batch is 1/M of the
step's prompts. Its loss is normalised by its own global counts, so it keeps all its rows for the
loss scales, but only the rows that carry gradient are packed into micro-batches and forwarded.

A rollout row carries no gradient when its weight in the loss is exactly zero:
* under `hard_gate`, while the hybrid is active, the rows of prompts routed to SFT (gate 0);
* the rows of a zero-advantage group (every policy loss is -A times something: 0, and so is its
  gradient);
* truncated responses under `algorithm.mask_truncated` (left out of L_PG).
Only when nothing else reads those rows: the KL loss term and the entropy bonus aggregate over every
rollout, and the `entropy` weighting's H is the mean entropy of every rollout token; with any of
them, or `algorithm.skip_zero_weight_rows=false`, every row is forwarded.
"""
from dataclasses import dataclass, replace
from typing import Callable

import torch

from superrl.algorithms.config import AlgorithmConfig
from superrl.algorithms.counts import ProcessGroup, all_reduce_sum, count_vector
from superrl.algorithms.switch import SwitchDecision
from superrl.trainer import batching
from superrl.trainer.batching import RowSet


@dataclass
class MiniBatch:
    rollout: RowSet  # all its rollout rows (the loss normalisers count them)
    experts: RowSet  # the expert rows of its prompts routed to SFT
    decision: SwitchDecision  # its prompts' gates; num_prompts of the global mini-batch
    advantages: torch.Tensor  # [rollout rows], or per token [rollout rows, S] (gae; batching.target_mask's layout)
    engine_logprobs: list  # [P][K] the engine's log-probs of its responses (parity guard, rollout correction)
    pg_rows: torch.Tensor  # bool [rollout rows]: the rows L_PG covers (not masked as truncated)
    forwarded: torch.Tensor  # bool [rollout rows]: the rows its micro-batches hold
    micro_batches: list  # [MicroBatch] of the forwarded rollout rows and every expert row


def reads_every_rollout_row(cfg: AlgorithmConfig) -> bool:
    """A loss term or a scale that reads rows whose PG weight is zero."""
    kl_loss = cfg.kl_coef > 0 and not cfg.kl_in_reward  # in the reward, the KL is taken before the update
    return (not cfg.skip_zero_weight_rows or kl_loss or cfg.entropy_coef > 0
            or cfg.hybrid.weighting == "entropy")


def rows_with_gradient(cfg: AlgorithmConfig, decision: SwitchDecision, rollout: RowSet,
                       advantages: torch.Tensor, pg_rows: torch.Tensor) -> torch.Tensor:
    """bool [rollout rows]: the rows whose loss weight can be nonzero (module docstring).
    `decision.num_sft_prompts > 0` is build_loss_scales' `hybrid_active`: every SFT-routed prompt
    has a non-empty expert row (it checks that)."""
    if reads_every_rollout_row(cfg):
        return torch.ones(len(rollout.rows), dtype=torch.bool)
    weighted = (advantages != 0).reshape(len(rollout.rows), -1).any(dim=1) & pg_rows
    if cfg.hybrid.weighting == "hard_gate" and decision.num_sft_prompts > 0:
        weighted &= decision.gates[rollout.prompt_index]
    return weighted


def split_mini_batches(cfg: AlgorithmConfig, examples: list, rollouts, advantages: torch.Tensor,
                       decision: SwitchDecision, pack: Callable[[list], list],
                       group: ProcessGroup) -> list:
    """[MiniBatch] of this rank's prompts; collective over `group` (DP) when M > 1 (the SFT
    prompts of each global mini-batch). `pack(rows)` builds micro-batches; advantages [P, K], or [P, K, S] per token."""
    m = cfg.ppo_mini_batches
    size = len(examples) // m  # M divides every rank's prompts (checked at start-up)
    chunks = [slice(i * size, (i + 1) * size) for i in range(m)]
    decisions = [decision] if m == 1 else _mini_batch_decisions(decision, chunks, group)
    return [_mini_batch(cfg, examples[c], rollouts.prompts(c, with_reward_metrics=False), advantages[c], d, pack)
            for c, d in zip(chunks, decisions)]


def _mini_batch_decisions(decision: SwitchDecision, chunks: list, group: ProcessGroup) -> list:
    num_sft = all_reduce_sum(count_vector(*[(~decision.gates[c]).sum() for c in chunks]), group).tolist()
    num_prompts = decision.num_prompts // len(chunks)
    return [replace(decision, gates=decision.gates[c], num_prompts=num_prompts, num_sft_prompts=int(n),
                    sft_fraction=n / num_prompts) for c, n in zip(chunks, num_sft)]


def _mini_batch(cfg, examples: list, rollouts, advantages: torch.Tensor, decision: SwitchDecision,
                pack) -> MiniBatch:
    rollout = batching.rollout_rows(examples, rollouts.response_ids)
    experts = batching.expert_rows(examples, (~decision.gates).nonzero().squeeze(1).tolist())
    advantages = advantages.flatten(0, 1)  # one row per response
    pg_rows = rows_in_pg_loss(cfg, rollouts.finish_reasons)
    forwarded = rows_with_gradient(cfg, decision, rollout, advantages, pg_rows)
    if not forwarded.any() and not experts.rows:
        forwarded[0] = True  # a zero-weight row: the rank still joins the step with one micro-batch
    rows = [row for row, keep in zip(rollout.rows, forwarded.tolist()) if keep] + experts.rows
    return MiniBatch(rollout, experts, decision, advantages, rollouts.logprobs, pg_rows, forwarded, pack(rows))


def rows_in_pg_loss(cfg: AlgorithmConfig, finish_reasons: list) -> torch.Tensor:
    """bool [rollout rows], prompt-major like the rows: False for a response that hit
    rollout.max_tokens without EOS (finish reason `length`) under `algorithm.mask_truncated`."""
    truncated = torch.tensor([reason == "length" for group in finish_reasons for reason in group], dtype=torch.bool)
    return ~truncated if cfg.mask_truncated else torch.ones_like(truncated)
