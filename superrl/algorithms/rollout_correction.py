"""Rollout/trainer mismatch correction (`algorithm.rollout_correction`).

The engine samples y_t from pi_engine; the trainer optimises pi_trainer. With the same weights the
two still differ (kernels, precision, a bf16 engine), so the rollouts are slightly off-policy.
Each rollout token's PG loss is multiplied by a detached weight built from the ratio
rho_t = pi_trainer(y_t) / pi_engine(y_t), where pi_trainer is the old (rollout) policy as the
trainer computes it and pi_engine the engine's log-prob of the token it sampled. With cap C
(`algorithm.rollout_correction_cap`):

    tis      w_t = min(rho_t, C)                          truncated importance sampling
    mis      w_t = 1[1/C <= rho_t <= C]                   masked: tokens outside the band get 0
    seq_tis  w_t = min(prod_{s in y} rho_s, C)            one truncated weight per sequence

Everything is computed in float64 log space (log rho = log pi_trainer - log pi_engine), so a
sequence's product of ratios never overflows before the cap. Masked (weight-0) tokens keep their
place in the loss normaliser; docs/policy_losses.md says why.
"""
import math

import torch

from superrl.algorithms.counts import ProcessGroup, all_reduce_max, all_reduce_sum, count_vector


def correction_weights(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor,
                       mode: str, cap: float) -> torch.Tensor:
    """[B, T] detached float64 weights w_t (module docstring); 1 outside `mask`, so padding never
    turns a 0-weight loss into NaN. `mode` is one of config.ROLLOUT_CORRECTIONS other than `none`
    (checked when the config is loaded), cap > 1."""
    valid = mask.bool()
    log_ratio = torch.where(valid, trainer_logprobs.detach().double() - engine_logprobs.detach().double(), 0.0)
    log_cap = math.log(cap)
    weights = {
        "tis": lambda: log_ratio.clamp(max=log_cap).exp(),
        "mis": lambda: (log_ratio.abs() <= log_cap).double(),
        "seq_tis": lambda: log_ratio.sum(dim=-1, keepdim=True).clamp(max=log_cap).exp().expand_as(log_ratio),
    }[mode]()  # exhaustive: an unknown name is a KeyError, never another correction
    return torch.where(valid, weights, 1.0)


def correction_metrics(weights: torch.Tensor, group: ProcessGroup) -> dict:
    """Collective over `group`: token mean and max of the weights of every rank's response tokens
    (`weights` [N], this rank's, possibly empty), and the fraction of them that are 0 (masked).
    Sums of counts and one MAX all-reduce, never an average of averages. With no tokens anywhere
    nothing was corrected: mean and max 1, nothing masked."""
    weights = weights.detach().double()
    total, count, masked = all_reduce_sum(count_vector(weights.sum(), weights.numel(), (weights == 0).sum()),
                                          group).tolist()
    local_max = float(weights.max()) if weights.numel() else -math.inf
    largest = all_reduce_max(torch.tensor([local_max], dtype=torch.float64), group).item()
    if count == 0:
        return {"rollout_correction/weight_mean": 1.0, "rollout_correction/weight_max": 1.0,
                "rollout_correction/masked_fraction": 0.0}
    return {"rollout_correction/weight_mean": total / count, "rollout_correction/weight_max": largest,
            "rollout_correction/masked_fraction": masked / count}
