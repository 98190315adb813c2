"""The Hybrid Actor's optimizer step: PG on rollout rows and SFT on expert rows of the same
micro-batches, combined by superrl.algorithms.hybrid on the last pipeline stage."""
import torch
from megatron.core import parallel_state as mpu

from superrl.algorithms.counts import global_token_mean
from superrl.algorithms.hybrid import (ExpertTokens, LogSigmaWeights, RolloutTokens, build_loss_scales,
                                       hybrid_loss)
from superrl.trainer.batching import EXPERT, ROLLOUT, target_mask
from superrl.trainer.step import IGNORE, forward_outputs, train_step


def attach_old_logprobs(model, micro_batches: list, key: str = "old_logprobs") -> None:
    """Recompute log pi(token) with the given model (current policy or frozen reference) and store
    them per micro-batch on the last stage, where the loss needs them."""
    outputs = forward_outputs(model, micro_batches)
    if outputs is None:
        return
    for mb, (logprobs, entropy) in zip(micro_batches, outputs):
        mb.extras[key] = logprobs
        if key == "old_logprobs":
            mb.extras["old_entropy"] = entropy


def _policy_entropy(micro_batches: list) -> float:
    """DP-global token-mean entropy of the rollout tokens under the current policy (detached)."""
    values = []
    for mb in micro_batches:
        rows = mb.extras["kind"] == ROLLOUT
        values.append(mb.extras["old_entropy"][rows][mb.targets[rows] != IGNORE])
    values = torch.cat(values)  # flat: micro-batches may differ in width
    return global_token_mean(values, torch.ones_like(values), mpu.get_data_parallel_group())


def loss_scales(cfg, decision, rollout, experts, micro_batches: list):
    """Step-wide gates and DP-global normalisers (last stage only; None elsewhere)."""
    if not mpu.is_pipeline_last_stage():
        return None
    entropy = _policy_entropy(micro_batches) if cfg.hybrid.weighting == "entropy" else None
    return build_loss_scales(cfg, decision, target_mask(rollout[0]), rollout[1], target_mask(experts[0]),
                             experts[1], num_micro_batches=len(micro_batches),
                             group=mpu.get_data_parallel_group(), policy_entropy=entropy)


def _hybrid_loss_fn(cfg, scales, advantages: torch.Tensor, log_sigma):
    def loss_fn(logprobs, entropy, mb):
        kind, index = mb.extras["kind"], mb.extras["index"]
        mask = (mb.targets != IGNORE).to(logprobs.dtype)
        r, e = (kind == ROLLOUT).nonzero().squeeze(1), (kind == EXPERT).nonzero().squeeze(1)
        rollout = expert = None
        if len(r):
            ref = mb.extras.get("ref_logprobs")
            rollout = RolloutTokens(logprobs[r], mb.extras["old_logprobs"][r], advantages[index[r]].to(logprobs.dtype),
                                    mask[r], entropy[r], None if ref is None else ref[r])
        if len(e):
            expert = ExpertTokens(logprobs[e], mask[e])
        if rollout is None and expert is None:  # a micro-batch of padding rows only
            return logprobs.sum() * 0.0, {}
        return hybrid_loss(cfg, scales.rows(index[r], index[e]), rollout, expert, log_sigma)
    return loss_fn


class LogSigmaTrainer:
    """The learnable `log_sigma` weights and their Adam, on the last stage (where the loss is).

    Their gradients are summed over DP like the model's, since the loss is globally normalised.
    """

    def __init__(self, hybrid_cfg, lr: float):
        self.weights = LogSigmaWeights.from_config(hybrid_cfg)
        self.optimizer = torch.optim.Adam(self.weights.parameters(), lr=lr)

    def step(self, apply: bool) -> None:
        """`apply=False`: the policy step was skipped (non-finite), so these weights stay too."""
        self.weights.all_reduce_grads(mpu.get_data_parallel_group())
        if apply:
            self.optimizer.step()
        self.optimizer.zero_grad()

    def state_dict(self) -> dict:
        return {"weights": self.weights.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.weights.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])


def actor_step(state, cfg, scales, advantages: torch.Tensor, micro_batches: list,
               log_sigma: LogSigmaTrainer = None) -> dict:
    """One optimizer step of the policy (and of the learnable log-sigma weights, if used)."""
    weights = log_sigma.weights if log_sigma is not None else None
    metrics = train_step(state, micro_batches, _hybrid_loss_fn(cfg, scales, advantages, weights))
    if log_sigma is not None and mpu.is_pipeline_last_stage():
        log_sigma.step(apply=bool(metrics["step_applied"]))
    return metrics
