"""The Hybrid Actor's update: PG on rollout rows and SFT on expert rows of the same micro-batches,
combined by superrl.algorithms.hybrid on the last pipeline stage, one optimizer step per PPO
mini-batch (mini_batches.py) and epoch.

Old log-probs. With one optimizer step per rollout batch, the policy that sampled (synced to the
engine right after the previous step) is the policy being trained, so log pi_old is the training
forward's own log-prob, detached: the PPO ratio is exp(0) = 1 bit for bit, as a separate pass would
compute it. A separate forward before the update is run only where it differs or is needed first:
several optimizer steps per batch, the `entropy` weighting (its H scales the loss), or
`algorithm.recompute_old_logprobs`. Either way the parity guard compares them with the engine's
before the first optimizer step, and with `algorithm.rollout_correction` the correction weights'
statistics are logged there (rollout_correction.py).
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from megatron.core import parallel_state as mpu

from superrl.algorithms.config import AlgorithmConfig
from superrl.algorithms.counts import global_token_mean
from superrl.algorithms.hybrid import (ExpertTokens, LogSigmaWeights, RolloutTokens, build_loss_scales,
                                       hybrid_loss)
from superrl.trainer.batching import EXPERT, ROLLOUT, target_mask, token_width
from superrl.trainer.mini_batches import MiniBatch
from superrl.trainer.rollout_correction import attach_engine_logprobs, correction_step_metrics
from superrl.trainer.step import IGNORE, accumulate_gradients, apply_gradients, forward_outputs, model_device

# (pairs of (micro-batches with old log-probs, the engine's log-probs)) -> parity metrics; collective
ParityCheck = Callable[[list], dict]


@dataclass
class ActorUpdate:
    """What one optimizer step consumes; features (feature.py) add their parts in `before_update`."""
    micro_batches: list  # [MicroBatch]
    log_sigma: Optional[LogSigmaWeights] = None  # the learnable loss weights, when they are used


def needs_old_logprob_pass(cfg: AlgorithmConfig) -> bool:
    """Whether the old log-probs need a forward of their own (module docstring)."""
    return cfg.ppo_mini_batches * cfg.ppo_epochs > 1 or cfg.recompute_old_logprobs or cfg.hybrid.weighting == "entropy"


def attach_old_logprobs(model, micro_batches: list) -> None:
    """Recompute log pi_old(token) and its entropy under the current policy, on the last stage
    (where the loss needs them)."""
    for mb, (logprobs, entropy) in zip(micro_batches, forward_outputs(model, micro_batches)):
        mb.old_logprobs, mb.old_entropy = logprobs, entropy


def _policy_entropy(micro_batches: list) -> float:
    """DP-global token-mean entropy of the rollout tokens under the current policy (detached)."""
    values = []
    for mb in micro_batches:
        mb = mb.to(mb.old_entropy.device)
        rows = mb.row_kind == ROLLOUT
        values.append(mb.old_entropy[rows][mb.targets[rows] != IGNORE])
    values = torch.cat(values)  # flat: micro-batches may differ in width
    return global_token_mean(values, torch.ones_like(values), mpu.get_data_parallel_group())


def loss_scales(cfg: AlgorithmConfig, mini: MiniBatch, device: torch.device):
    """Step-wide gates and DP-global normalisers of `mini` (last stage only; None elsewhere), on
    the model's device, where the loss indexes them with the micro-batches' rows."""
    if not mpu.is_pipeline_last_stage():
        return None
    entropy = _policy_entropy(mini.micro_batches) if cfg.hybrid.weighting == "entropy" else None
    rollout, experts = mini.rollout, mini.experts
    return build_loss_scales(cfg, mini.decision, target_mask(rollout.rows).to(device), rollout.prompt_index.to(device),
                             target_mask(experts.rows).to(device), experts.prompt_index.to(device),
                             num_micro_batches=len(mini.micro_batches), group=mpu.get_data_parallel_group(),
                             policy_entropy=entropy, forwarded_rows=mini.forwarded.to(device),
                             pg_rows=mini.pg_rows.to(device))


def _hybrid_loss_fn(cfg, scales, advantages: torch.Tensor, log_sigma: Optional[LogSigmaWeights],
                    on_policy_outputs: Optional[list]):
    """The micro-batch loss. `on_policy_outputs` (a list): pi_old is the forward's own detached
    log-prob, and each micro-batch's detached (logprobs, entropy) is appended to it."""
    def loss_fn(logprobs, entropy, mb):
        if on_policy_outputs is not None:
            on_policy_outputs.append((logprobs.detach(), entropy.detach()))
        old_logprobs = logprobs.detach() if on_policy_outputs is not None else mb.old_logprobs
        kind, index = mb.row_kind, mb.row_index
        mask = (mb.targets != IGNORE).to(logprobs.dtype)
        r, e = (kind == ROLLOUT).nonzero().squeeze(1), (kind == EXPERT).nonzero().squeeze(1)
        rollout = None
        if len(r):
            ref, engine = mb.ref_logprobs, mb.engine_logprobs
            rollout = RolloutTokens(logprobs[r], old_logprobs[r], _row_advantages(advantages, index[r], logprobs),
                                    mask[r], entropy[r], None if ref is None else ref[r],
                                    None if engine is None else engine[r])
        # a micro-batch of padding rows only still takes its share of the step's constants and
        # reports every metric key (DP ranks reduce the same keys)
        expert = ExpertTokens(logprobs[e], mask[e]) if len(e) or rollout is None else None
        return hybrid_loss(cfg, scales.rows(index[r], index[e]), rollout, expert, log_sigma)
    return loss_fn


def _row_advantages(advantages: torch.Tensor, index: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """The advantages of rows `index`: [B] per response, or [B, s] per token (gae) at the
    micro-batch's width s."""
    rows = advantages[index].to(logprobs.dtype)
    return rows if rows.dim() == 1 else token_width(rows, logprobs.shape[1])


def _parity_pairs(model, minis: list, pack) -> list:
    """(micro-batches with old log-probs, engine log-probs) of every mini-batch that forwards
    rollout rows; a rank that forwards none (every prompt routed to SFT) checks its first rollout
    row in a forward of its own (its model-parallel group decides alike: same rows)."""
    pairs = [(m.micro_batches, m.engine_logprobs) for m in minis
             if any(bool((mb.row_kind == ROLLOUT).any()) for mb in m.micro_batches)]
    if pairs:
        return pairs
    probe = pack(minis[0].rollout.rows[:1])
    attach_old_logprobs(model, probe)
    return [(probe, minis[0].engine_logprobs)]


def _mismatch_metrics(model, cfg: AlgorithmConfig, minis: list, check_parity: ParityCheck, pack) -> dict:
    """Collective, once the old log-probs are attached: the parity guard (which stops the run when
    the engine disagrees) and the rollout correction's statistics."""
    metrics = check_parity(_parity_pairs(model, minis, pack))
    if cfg.rollout_correction != "none":
        metrics.update(correction_step_metrics(cfg, minis))
    return metrics


def update_actor(state, cfg: AlgorithmConfig, minis: list, features: list, check_parity: ParityCheck,
                 pack: Callable[[list], list]) -> dict:
    """Every optimizer step on one rollout batch; returns the mean of their metrics, the parity
    guard's (which stops the run before the first optimizer step) and the rollout correction's.
    `pack` as in mini_batches.split_mini_batches."""
    model, on_policy = state.model, not needs_old_logprob_pass(cfg)
    updates = [ActorUpdate(m.micro_batches) for m in minis]
    if cfg.rollout_correction != "none":
        attach_engine_logprobs(minis)
    if not on_policy:
        for m in minis:
            attach_old_logprobs(model, m.micro_batches)
    for update in updates:
        for feature in features:
            feature.before_update(update)
    mismatch = None if on_policy else _mismatch_metrics(model, cfg, minis, check_parity, pack)
    device, history = model_device(model), []
    for _ in range(cfg.ppo_epochs):
        for m, update in zip(minis, updates):
            outputs = [] if on_policy else None
            loss_fn = _hybrid_loss_fn(cfg, loss_scales(cfg, m, device), m.advantages.to(device),
                                      update.log_sigma, outputs)
            metrics = accumulate_gradients(state, m.micro_batches, loss_fn)
            if on_policy:  # the one step: its forward gave the old log-probs
                for mb, (logprobs, entropy) in zip(m.micro_batches, outputs):
                    mb.old_logprobs, mb.old_entropy = logprobs, entropy
                mismatch = _mismatch_metrics(model, cfg, minis, check_parity, pack)
            metrics.update(apply_gradients(state, metrics))
            for feature in features:
                feature.after_update(metrics)
            history.append(metrics)
    return {**mean_over_steps(history), **mismatch}


def mean_over_steps(history: list) -> dict:
    """Each metric's mean over the optimizer steps; `step_applied` is 1 only when all were."""
    out = {key: sum(h[key] for h in history) / len(history) for key in history[0]}
    out["step_applied"] = float(min(h["step_applied"] for h in history))
    return out
