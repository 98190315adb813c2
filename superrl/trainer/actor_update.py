"""The Hybrid Actor's optimizer step: PG on rollout rows and SFT on expert rows of the same
micro-batches, combined by superrl.algorithms.hybrid on the last pipeline stage."""
from dataclasses import dataclass
from typing import Optional

import torch
from megatron.core import parallel_state as mpu

from superrl.algorithms.counts import global_token_mean
from superrl.algorithms.hybrid import (ExpertTokens, LogSigmaWeights, RolloutTokens, build_loss_scales,
                                       hybrid_loss)
from superrl.trainer.batching import EXPERT, ROLLOUT, RowSet, target_mask
from superrl.trainer.step import IGNORE, forward_outputs, model_device, train_step


@dataclass
class ActorUpdate:
    """What one actor step consumes; features (feature.py) add their parts in `before_update`."""
    micro_batches: list  # [MicroBatch]
    log_sigma: Optional[LogSigmaWeights] = None  # the learnable loss weights, when they are used


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


def loss_scales(cfg, decision, rollout: RowSet, experts: RowSet, micro_batches: list):
    """Step-wide gates and DP-global normalisers (last stage only; None elsewhere), on the model's
    device, where the loss indexes them with the micro-batches' rows: the device of the old
    log-probs attach_old_logprobs recomputed."""
    if not mpu.is_pipeline_last_stage():
        return None
    device = micro_batches[0].old_logprobs.device
    entropy = _policy_entropy(micro_batches) if cfg.hybrid.weighting == "entropy" else None
    return build_loss_scales(cfg, decision, target_mask(rollout.rows).to(device), rollout.prompt_index.to(device),
                             target_mask(experts.rows).to(device), experts.prompt_index.to(device),
                             num_micro_batches=len(micro_batches), group=mpu.get_data_parallel_group(),
                             policy_entropy=entropy)


def _hybrid_loss_fn(cfg, scales, advantages: torch.Tensor, log_sigma: Optional[LogSigmaWeights]):
    def loss_fn(logprobs, entropy, mb):
        kind, index = mb.row_kind, mb.row_index
        mask = (mb.targets != IGNORE).to(logprobs.dtype)
        r, e = (kind == ROLLOUT).nonzero().squeeze(1), (kind == EXPERT).nonzero().squeeze(1)
        rollout = expert = None
        if len(r):
            ref = mb.ref_logprobs
            rollout = RolloutTokens(logprobs[r], mb.old_logprobs[r], advantages[index[r]].to(logprobs.dtype),
                                    mask[r], entropy[r], None if ref is None else ref[r])
        if len(e):
            expert = ExpertTokens(logprobs[e], mask[e])
        if rollout is None and expert is None:  # a micro-batch of padding rows only
            return logprobs.sum() * 0.0, {}
        return hybrid_loss(cfg, scales.rows(index[r], index[e]), rollout, expert, log_sigma)
    return loss_fn


def actor_step(state, cfg, scales, advantages: torch.Tensor, update: ActorUpdate) -> dict:
    """One optimizer step of the policy on `update`'s micro-batches."""
    advantages = advantages.to(model_device(state.model))  # the loss indexes them with its rows
    return train_step(state, update.micro_batches, _hybrid_loss_fn(cfg, scales, advantages, update.log_sigma))
