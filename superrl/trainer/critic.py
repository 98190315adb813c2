"""PPO's critic in the SuperRL loop (`algorithm.advantage=gae`, `critic.*`).

Per rollout batch, on every rank of the policy's placement:
1. `estimate`: the critic's values of the rollout rows, computed once (the "old" values V_old the
   value loss clips around), GAE advantages and returns over the response tokens (algorithms/gae.py)
   and the advantages whitened over the DP-global batch. Every PP stage gets the values (the
   actor's mini-batches decide which rows to forward from the advantages, alike on every stage).
2. the actor trains on the per-token advantages (actor_update.py), except during
   `critic.warmup_steps`, when only the critic trains;
3. `update`: the clipped value loss (algorithms/value_loss.py) on the actor's mini-batches and
   epochs: the same prompts per optimizer step, every rollout row of them (the value loss has no
   zero-weight rows), aggregated by `algorithm.loss_agg` with the mini-batch's DP-global counts.

Per-row tensors are [R, S] in the rows' layout (batching.target_mask: position t of row r is where
the model predicts its token t + 1), R this rank's rollout rows, prompt-major as the rewards.
"""
from dataclasses import dataclass

import torch
from megatron.core import parallel_state as mpu

from superrl.algorithms.counts import all_reduce_sum, count_vector, global_token_counts
from superrl.algorithms.gae import gae, outcome_token_rewards, whiten
from superrl.algorithms.policy_loss import aggregate
from superrl.algorithms.value_loss import clipped_value_loss
from superrl.config import Config
from superrl.hf_config import ModelArch
from superrl.trainer.actor_update import mean_over_steps
from superrl.trainer.batching import ROLLOUT, RowSet, target_mask, to_row_layout, token_width
from superrl.trainer.model_setup import build_critic_state
from superrl.trainer.step import IGNORE, forward_outputs, from_last_stage, train_step


@dataclass
class CriticBatch:
    """One rollout batch's critic tensors, [R, S] float64, 0 off the response tokens."""
    old_values: torch.Tensor
    returns: torch.Tensor
    advantages: torch.Tensor  # whitened over the DP-global batch

    def metrics(self, rows: RowSet) -> dict:
        """DP-global token means of the old values, the returns and the whitened advantages
        (collective over DP)."""
        mask = target_mask(rows.rows).to(torch.float64)
        local = count_vector(mask.sum(), *((t * mask).sum() for t in (self.old_values, self.returns, self.advantages)))
        tokens, values, returns, advantages = all_reduce_sum(local, mpu.get_data_parallel_group()).tolist()
        tokens = max(tokens, 1.0)
        return {"critic/values_mean": values / tokens, "critic/returns_mean": returns / tokens,
                "critic/advantages_mean": advantages / tokens}


class Critic:
    def __init__(self, config: Config, arch: ModelArch):
        self.config = config
        self.state = build_critic_state(config, arch)

    def trains_actor(self, step: int) -> bool:
        """False during the critic's warm-up (`step` counts completed steps)."""
        return step >= self.config.critic.warmup_steps

    def estimate(self, rows: RowSet, rewards: torch.Tensor, pack, policy, reference=None) -> tuple:
        """(CriticBatch, metrics). Collective (model-parallel group for the forwards, DP for the
        whitening). `rewards` [P, K] (rows prompt-major), `pack` builds micro-batches of rows;
        `reference`: the ReferenceKL feature when the KL goes into the reward, whose per-token KL
        of `policy` (the rollout policy) each token's reward then pays."""
        algorithm = self.config.algorithm
        mask = target_mask(rows.rows).to(torch.float64)
        values = self._values(rows.rows, pack, mask.shape[1]) * mask
        token_kl, metrics = None, {}
        if reference is not None:
            kl, kl_mask = reference.response_kl(policy, rows.rows, pack)
            token_kl = to_row_layout(kl, rows.rows, mask.shape[1])
            metrics = reference.kl_metrics(kl.sum(dim=1), kl_mask)
        token_rewards = outcome_token_rewards(rewards.flatten(), mask, token_kl, algorithm.kl_coef)
        result = gae(token_rewards, values, mask, algorithm.gamma, algorithm.lam)
        advantages = whiten(result.advantages, mask, mpu.get_data_parallel_group())
        return CriticBatch(values, result.returns, advantages), metrics

    def _values(self, rows: list, pack, width: int) -> torch.Tensor:
        """[R, width] float64 values of `rows` on every rank: forwarded on the last PP stage, then
        broadcast over the PP group."""
        values = torch.zeros(len(rows), width, dtype=torch.float64)
        micro_batches = pack(rows)
        for mb, (mb_values,) in zip(micro_batches, forward_outputs(self.state.model, micro_batches)):
            kept = (mb.row_kind == ROLLOUT).nonzero().squeeze(1)
            values[mb.row_index[kept], :mb_values.shape[1]] = mb_values[kept].cpu().to(torch.float64)
        return from_last_stage(values)

    def update(self, minis: list, batch: CriticBatch, pack) -> dict:
        """One critic optimizer step per mini-batch and epoch; the mean of their metrics."""
        spans, start, history = [], 0, []
        for mini in minis:  # the minis' rollout rows are consecutive, prompt-major slices of the batch
            spans.append(slice(start, start + len(mini.rollout.rows)))
            start += len(mini.rollout.rows)
        for _ in range(self.config.algorithm.ppo_epochs):
            for mini, span in zip(minis, spans):
                counts = global_token_counts(target_mask(mini.rollout.rows), mpu.get_data_parallel_group())
                loss_fn = self._loss_fn(batch.old_values[span], batch.returns[span], counts)
                history.append(train_step(self.state, pack(mini.rollout.rows), loss_fn))
        means = mean_over_steps(history)
        return {**{key: value for key, value in means.items() if key.startswith("critic/")},
                "critic/grad_norm": means["grad_norm"], "critic/lr": self.state.optimizer.param_groups[0]["lr"]}

    def _loss_fn(self, old_values: torch.Tensor, returns: torch.Tensor, counts):
        """The micro-batch's share of the clipped value loss, and of the clipped tokens' fraction."""
        cliprange, loss_agg = self.config.critic.cliprange_value, self.config.algorithm.loss_agg
        denom, tokens = counts.denominator(loss_agg), max(counts.num_tokens, 1.0)

        def loss_fn(values, mb):
            rows = (mb.row_kind == ROLLOUT).nonzero().squeeze(1)
            index, width = mb.row_index[rows].cpu(), values.shape[1]
            values = values[rows]
            mask = (mb.targets[rows] != IGNORE).to(values.dtype)
            out = clipped_value_loss(values, token_width(old_values[index], width).to(values),
                                     token_width(returns[index], width).to(values), cliprange)
            loss = aggregate(out.loss, mask, loss_agg, denom)
            return loss, {"critic/value_loss": loss.detach(), "critic/vf_clipfrac": (out.clipped * mask).sum() / tokens}
        return loss_fn
