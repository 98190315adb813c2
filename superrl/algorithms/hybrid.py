"""The Hybrid Actor: L_PG on rollouts combined with L_SFT on expert trajectories y*.

Call sequence per optimizer step, on every DP rank:

    decision = switch.decide(rewards, step=step, has_expert=has_expert, group=dp_group)
    scales = build_loss_scales(cfg, decision, response_mask, prompt_index,
                               expert_mask, expert_prompt_index,
                               num_micro_batches=M, group=dp_group, policy_entropy=H)
    for rollout_rows, expert_rows in micro_batches:             # slices or index tensors
        loss, metrics = hybrid_loss(cfg, scales.rows(rollout_rows, expert_rows),
                                    RolloutTokens(...), ExpertTokens(...), log_sigma)
        loss.backward()

Shapes (one rank; B rollout rows, Be expert rows, both right-padded):
    response_mask       [B, T]   1 on response tokens of rollout row b
    prompt_index        [B]      long, local prompt of row b (index into decision.gates); all K
                                 responses of a prompt live on one rank (each rank rolls out its own)
    expert_mask         [Be, Te] 1 on y* tokens
    expert_prompt_index [Be]     long, local prompt of expert row e. Every prompt the switch routes
                                 to SFT must have a non-empty expert row; rows of PG prompts may be
                                 omitted (they get weight 0)

The returned loss is this micro-batch's SHARE of the step loss: summing it over micro-batches and
DP ranks gives exactly the full-batch loss (all normalisers are DP-global counts), so gradients,
`LogSigmaWeights`' included, are summed over DP (the trainer's loss-normalisation contract:
superrl/trainer/model_setup.py). Metrics are shares too: sum them over micro-batches, then
all-reduce SUM over DP.

Weightings (`algorithm.hybrid.weighting`), used while the hybrid is active (some prompt of the
global batch is routed to SFT); otherwise the loss is plain RL, L = L_PG, for every weighting:
    hard_gate  L = 1/P sum_x [c(x) L_PG(x) + (1 - c(x)) lambda L_SFT(x)], each prompt's terms
               normalised within the prompt (its K responses / its y*) by `loss_agg`
    fixed      L = L_PG + lambda L_SFT
    log_sigma  L = exp(-2 s_pg) L_PG + exp(-2 s_sft) L_SFT + s_pg + s_sft (LogSigmaWeights)
    entropy    L = L_PG + alpha exp(-H) L_SFT, H = detached DP-global mean token entropy (SRFT)
In fixed/log_sigma/entropy, L_PG covers all rollouts and L_SFT the y* of SFT-routed prompts, each
normalised over the global batch by `loss_agg`. The KL term (+kl_coef * KL, unless kl_in_reward) and
the entropy bonus (-entropy_coef * H) are aggregated like L_PG over all rollouts.

L_PG's per-token loss is `algorithm.policy_loss`'s (policy_loss.py), times the rollout-correction
weight of the token when `algorithm.rollout_correction` is set (rollout_correction.py). Rows left
out of L_PG (`pg_rows`, e.g. truncated responses under `algorithm.mask_truncated`) are out of its
normaliser too; the KL and entropy terms still cover them.
"""
import math
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch
from torch import nn

from superrl.algorithms.config import AlgorithmConfig, HybridConfig
from superrl.algorithms.counts import (ProcessGroup, TokenCounts, all_reduce_sum, count_vector,
                                       valid_rows)
from superrl.algorithms.kl import kl_per_token
from superrl.algorithms.policy_loss import aggregate, policy_token_loss
from superrl.algorithms.rollout_correction import correction_weights
from superrl.algorithms.sft_loss import sft_loss
from superrl.algorithms.switch import SwitchDecision

Rows = Union[slice, torch.Tensor]
Weight = Union[float, torch.Tensor]


@dataclass
class RolloutTokens:
    """One micro-batch of rollout rows, all [B, T] (advantages may be [B])."""
    logprobs: torch.Tensor                       # log pi_theta(y_t), differentiable
    old_logprobs: torch.Tensor                   # log pi_old(y_t) of the rollout policy
    advantages: torch.Tensor                     # [B] or [B, T]
    mask: torch.Tensor                           # response-token mask
    entropy: Optional[torch.Tensor] = None       # token entropy of pi_theta (bonus + metric)
    ref_logprobs: Optional[torch.Tensor] = None  # log pi_ref(y_t) (KL loss + metric)
    engine_logprobs: Optional[torch.Tensor] = None  # log pi_engine(y_t) the engine sampled with (rollout correction)


@dataclass
class ExpertTokens:
    """One micro-batch of expert rows, all [Be, Te]."""
    logprobs: torch.Tensor  # log pi_theta(y*_t), differentiable
    mask: torch.Tensor      # y* token mask


@dataclass
class LossScales:
    """Per-row gates/denominators and step constants built once per optimizer step."""
    pg_gate: torch.Tensor     # [B] 1 = row's PG term counts
    pg_denom: torch.Tensor    # [B] global (or per-prompt, hard_gate) normaliser of L_PG
    aux_denom: torch.Tensor   # [B] global normaliser of the KL / entropy terms (every rollout row)
    sft_gate: torch.Tensor    # [Be] 1 = row's prompt is routed to SFT
    sft_denom: torch.Tensor   # [Be] normaliser of L_SFT
    num_tokens: float         # global response tokens of the forwarded rollout rows (token-mean metrics)
    hybrid_active: bool       # some prompt of the global batch is routed to SFT
    sft_fraction: float       # from the switch decision
    micro_share: float        # 1 / (micro-batches summed over DP): share of per-step constants
    policy_entropy: Optional[float] = None  # H for the `entropy` weighting

    def rows(self, rollout_rows: Rows, expert_rows: Rows = slice(None)) -> "LossScales":
        """The scales of one micro-batch's rollout rows and expert rows."""
        return replace(self, pg_gate=self.pg_gate[rollout_rows], pg_denom=self.pg_denom[rollout_rows],
                       aux_denom=self.aux_denom[rollout_rows], sft_gate=self.sft_gate[expert_rows],
                       sft_denom=self.sft_denom[expert_rows])


class LogSigmaWeights(nn.Module):
    """Learnable weighting L = exp(-2 s_pg) L_PG + exp(-2 s_sft) L_SFT + s_pg + s_sft.

    s is clamped at `floor`: a loss term <= 0 (PPO losses often are) would otherwise drive its s
    to -inf and its weight to +inf. Optimise the two parameters with the model and checkpoint
    them with `state_dict()`.
    """

    def __init__(self, floor: float = 0.0, init_pg: float = 0.0, init_sft: float = 1.0):
        super().__init__()
        if min(init_pg, init_sft) < floor:
            raise ValueError(f"log-sigma init (pg={init_pg}, sft={init_sft}) is below floor={floor}")
        self.floor = floor
        self.s_pg = nn.Parameter(torch.tensor(float(init_pg)))
        self.s_sft = nn.Parameter(torch.tensor(float(init_sft)))

    @classmethod
    def from_config(cls, cfg: HybridConfig) -> "LogSigmaWeights":
        return cls(cfg.log_sigma_floor, cfg.log_sigma_init_pg, cfg.log_sigma_init_sft)

    def clamped(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.s_pg.clamp(min=self.floor), self.s_sft.clamp(min=self.floor)

    def forward(self, pg_term: torch.Tensor, sft_term: torch.Tensor,
                micro_share: float = 1.0) -> torch.Tensor:
        """`micro_share` scales the constant s_pg + s_sft so it is counted once per step."""
        s_pg, s_sft = self.clamped()
        return (torch.exp(-2 * s_pg) * pg_term + torch.exp(-2 * s_sft) * sft_term
                + (s_pg + s_sft) * micro_share)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached effective weights (exp(-2 s_pg), exp(-2 s_sft))."""
        s_pg, s_sft = self.clamped()
        return torch.exp(-2 * s_pg).detach(), torch.exp(-2 * s_sft).detach()

    def all_reduce_grads(self, group: ProcessGroup) -> None:
        """SUM the grads over DP, like the model's."""
        if group is None:
            return
        for param in (self.s_pg, self.s_sft):
            if param.grad is not None:
                param.grad.copy_(all_reduce_sum(param.grad, group))


def _per_prompt_counts(mask: torch.Tensor, prompt_index: torch.Tensor, num_prompts: int,
                       loss_agg: str) -> torch.Tensor:
    """[P_local] tokens (token_mean) or non-empty rows (seq modes) of each prompt's rows."""
    per_row = mask.sum(dim=-1) if loss_agg == "token_mean" else valid_rows(mask)
    counts = torch.zeros(num_prompts, dtype=torch.float64, device=mask.device)
    return counts.index_add_(0, prompt_index, per_row.to(torch.float64))


def _check_index(index: torch.Tensor, rows: int, num_prompts: int, name: str) -> None:
    if index.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},), got {tuple(index.shape)}")
    if rows and (index.min() < 0 or index.max() >= num_prompts):
        raise ValueError(f"{name} must lie in [0, {num_prompts}) (local prompts of the decision)")


def _check_sft_rows(gates: torch.Tensor, expert_mask: torch.Tensor,
                    expert_prompt_index: torch.Tensor) -> None:
    """Every SFT-routed prompt needs a non-empty expert row, else it would get no loss at all."""
    covered = torch.zeros_like(gates)
    covered[expert_prompt_index[valid_rows(expert_mask)]] = True
    missing = (~gates & ~covered).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"local prompts {missing} are routed to SFT but have no non-empty expert "
                         "row (pass has_expert=False to the switch for prompts without y*)")


def build_loss_scales(cfg: AlgorithmConfig, decision: SwitchDecision, response_mask: torch.Tensor,
                      prompt_index: torch.Tensor, expert_mask: Optional[torch.Tensor] = None,
                      expert_prompt_index: Optional[torch.Tensor] = None, *,
                      num_micro_batches: int = 1, group: ProcessGroup = None,
                      policy_entropy: Optional[float] = None,
                      forwarded_rows: Optional[torch.Tensor] = None,
                      pg_rows: Optional[torch.Tensor] = None) -> LossScales:
    """Gates and DP-global normalisers of one optimizer step, from ALL its local rows (one
    all-reduce). Shapes in the module docstring; slice the result per micro-batch with `.rows()`.
    `forwarded_rows` (bool [B], default all): the rollout rows the step forwards; rows left out
    must have zero weight (the loss is unchanged), and the token-mean metrics cover the others.
    `pg_rows` (bool [B], default all): the rollout rows L_PG covers; the others are out of L_PG and
    of its normalisers (but not of the KL and entropy terms')."""
    agg, hybrid_cfg = cfg.loss_agg, cfg.hybrid
    gates = decision.gates.to(response_mask.device)
    num_local_prompts = gates.shape[0]
    if expert_mask is None:
        expert_mask = response_mask.new_zeros(0, 1)
        expert_prompt_index = torch.zeros(0, dtype=torch.long, device=response_mask.device)
    _check_index(prompt_index, response_mask.shape[0], num_local_prompts, "prompt_index")
    _check_index(expert_prompt_index, expert_mask.shape[0], num_local_prompts, "expert_prompt_index")
    _check_sft_rows(gates, expert_mask, expert_prompt_index)
    if num_micro_batches < 1:
        raise ValueError(f"num_micro_batches={num_micro_batches} must be >= 1")

    pg_row = (torch.ones(response_mask.shape[0], dtype=torch.float64, device=response_mask.device)
              if pg_rows is None else pg_rows.to(device=response_mask.device, dtype=torch.float64))
    pg_mask = response_mask * pg_row[:, None].to(response_mask.dtype)
    sft_gate = 1.0 - gates[expert_prompt_index].to(torch.float64)
    sft_mask = expert_mask * sft_gate[:, None].to(expert_mask.dtype)
    forwarded = response_mask.sum(dim=-1) if forwarded_rows is None else response_mask[forwarded_rows].sum(dim=-1)
    local = count_vector(pg_mask.sum(), valid_rows(pg_mask).sum(), response_mask.sum(),
                         valid_rows(response_mask).sum(), sft_mask.sum(), valid_rows(sft_mask).sum(),
                         num_micro_batches, forwarded.sum())
    pg_tokens, pg_seqs, aux_tokens, aux_seqs, sft_tokens, sft_seqs, total_micro_batches, forwarded_tokens = (
        all_reduce_sum(local, group).tolist())
    pg_counts, sft_counts = TokenCounts(pg_tokens, pg_seqs), TokenCounts(sft_tokens, sft_seqs)
    hybrid_active = sft_seqs > 0

    if hybrid_active and hybrid_cfg.weighting == "entropy" and policy_entropy is None:
        raise ValueError("algorithm.hybrid.weighting='entropy' needs policy_entropy (the detached "
                         "DP-global mean token entropy, e.g. counts.global_token_mean)")
    aux_denom = torch.full_like(pg_row, TokenCounts(aux_tokens, aux_seqs).denominator(agg))
    if hybrid_active and hybrid_cfg.weighting == "hard_gate":
        # per-prompt normalisation inside the mean over the P global prompts
        pg_per_prompt = _per_prompt_counts(pg_mask, prompt_index, num_local_prompts, agg)
        sft_per_prompt = _per_prompt_counts(expert_mask, expert_prompt_index, num_local_prompts, agg)
        pg_gate = pg_row * gates[prompt_index].to(torch.float64)
        pg_denom = decision.num_prompts * pg_per_prompt[prompt_index]
        sft_denom = decision.num_prompts * sft_per_prompt[expert_prompt_index]
    else:
        pg_gate = pg_row
        pg_denom = torch.full_like(pg_row, pg_counts.denominator(agg))
        sft_denom = torch.full_like(sft_gate, sft_counts.denominator(agg))
    return LossScales(pg_gate=pg_gate, pg_denom=pg_denom, aux_denom=aux_denom, sft_gate=sft_gate,
                      sft_denom=sft_denom, num_tokens=forwarded_tokens, hybrid_active=hybrid_active,
                      sft_fraction=decision.sft_fraction, micro_share=1.0 / total_micro_batches,
                      policy_entropy=policy_entropy)


def _check_rows(name: str, tensor: torch.Tensor, rows: int) -> None:
    if tensor.shape[0] != rows:
        raise ValueError(f"{name} has {tensor.shape[0]} rows but the loss scales have {rows}; "
                         "slice the scales with LossScales.rows() like the micro-batch")


def _token_mean_share(values: torch.Tensor, mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    return (values.detach() * mask).sum() / max(num_tokens, 1.0)


def _rollout_terms(cfg: AlgorithmConfig, scales: LossScales, rollout: RolloutTokens,
                   zero: torch.Tensor) -> dict:
    """PG / KL / entropy loss terms and token-mean metrics of the rollout rows."""
    _check_rows("rollout micro-batch", rollout.logprobs, scales.pg_gate.shape[0])
    mask = rollout.mask.to(rollout.logprobs.dtype)
    token_loss = policy_token_loss(cfg, rollout.logprobs, rollout.old_logprobs, rollout.advantages, mask)
    pg_mask = mask * scales.pg_gate[:, None].to(mask.dtype)
    terms = {
        "pg": aggregate(token_loss.loss * _correction(cfg, rollout, mask), pg_mask, cfg.loss_agg, scales.pg_denom),
        "clip_frac": _token_mean_share(token_loss.clipped.to(mask.dtype), mask, scales.num_tokens),
        "dual_clip_frac": _token_mean_share(token_loss.dual_clipped.to(mask.dtype), mask, scales.num_tokens),
        "kl": zero, "kl_metric": zero, "entropy": zero, "entropy_metric": zero,
    }
    if rollout.ref_logprobs is not None:
        kl = kl_per_token(rollout.logprobs, rollout.ref_logprobs, cfg.kl_estimator)
        terms["kl"] = aggregate(kl, mask, cfg.loss_agg, scales.aux_denom)
        terms["kl_metric"] = _token_mean_share(kl, mask, scales.num_tokens)
    elif cfg.kl_coef > 0 and not cfg.kl_in_reward:
        raise ValueError("algorithm.kl_coef > 0 with kl_in_reward=false needs rollout.ref_logprobs")
    if rollout.entropy is not None:
        terms["entropy"] = aggregate(rollout.entropy, mask, cfg.loss_agg, scales.aux_denom)
        terms["entropy_metric"] = _token_mean_share(rollout.entropy, mask, scales.num_tokens)
    elif cfg.entropy_coef > 0:
        raise ValueError("algorithm.entropy_coef > 0 needs rollout.entropy")
    return terms


def _correction(cfg: AlgorithmConfig, rollout: RolloutTokens, mask: torch.Tensor) -> Weight:
    """The rollout-correction weight of each token's PG loss (1.0 without a correction)."""
    if cfg.rollout_correction == "none":
        return 1.0
    if rollout.engine_logprobs is None:
        raise ValueError(f"algorithm.rollout_correction={cfg.rollout_correction!r} needs rollout.engine_logprobs")
    return correction_weights(rollout.old_logprobs, rollout.engine_logprobs, mask, cfg.rollout_correction,
                              cfg.rollout_correction_cap).to(mask.dtype)


def _combine(cfg: HybridConfig, scales: LossScales, pg: torch.Tensor, sft: torch.Tensor,
             log_sigma: Optional[LogSigmaWeights]) -> tuple[torch.Tensor, Weight, Weight]:
    """(loss, pg weight, sft weight) of the weighting; plain RL while the hybrid is inactive."""
    if not scales.hybrid_active:
        # 0 * sft keeps forwarded expert rows in the graph (zero grads, no unused-output surprises)
        return pg + 0.0 * sft, 1.0, 0.0
    if cfg.weighting in ("hard_gate", "fixed"):
        return pg + cfg.sft_coef * sft, 1.0, cfg.sft_coef
    if cfg.weighting == "entropy":
        sft_weight = cfg.entropy_alpha * math.exp(-scales.policy_entropy)
        return pg + sft_weight * sft, 1.0, sft_weight
    if log_sigma is None:
        raise ValueError("algorithm.hybrid.weighting='log_sigma' needs a LogSigmaWeights module")
    pg_weight, sft_weight = log_sigma.weights()  # tensors: no device sync per micro-batch
    return log_sigma(pg, sft, scales.micro_share), pg_weight, sft_weight


def hybrid_loss(cfg: AlgorithmConfig, scales: LossScales, rollout: Optional[RolloutTokens],
                expert: Optional[ExpertTokens] = None,
                log_sigma: Optional[LogSigmaWeights] = None) -> tuple[torch.Tensor, dict]:
    """One micro-batch's share of the step loss, and its metric shares (detached 0-dim tensors).

    `rollout` or `expert` may be None for a micro-batch without such rows. Metric keys:
    loss/total, loss/pg, loss/sft (terms before their weights), loss/kl, actor/entropy, actor/kl,
    actor/clip_frac, actor/dual_clip_frac (token means), hybrid/pg_weight, hybrid/sft_weight,
    hybrid/active, switch/sft_fraction.
    """
    if rollout is None and expert is None:
        raise ValueError("hybrid_loss needs rollout rows, expert rows, or both")
    zero = (rollout if rollout is not None else expert).logprobs.new_zeros(())
    if rollout is not None:
        terms = _rollout_terms(cfg, scales, rollout, zero)
    else:
        terms = dict.fromkeys(("pg", "clip_frac", "dual_clip_frac", "kl", "kl_metric", "entropy",
                               "entropy_metric"), zero)
    sft = zero
    if expert is not None:
        _check_rows("expert micro-batch", expert.logprobs, scales.sft_gate.shape[0])
        dtype = expert.logprobs.dtype
        sft_mask = expert.mask.to(dtype) * scales.sft_gate[:, None].to(dtype)
        sft = sft_loss(expert.logprobs, sft_mask, cfg.loss_agg, scales.sft_denom)

    loss, pg_weight, sft_weight = _combine(cfg.hybrid, scales, terms["pg"], sft, log_sigma)
    if cfg.kl_coef > 0 and not cfg.kl_in_reward:
        loss = loss + cfg.kl_coef * terms["kl"]
    if cfg.entropy_coef > 0:
        loss = loss - cfg.entropy_coef * terms["entropy"]

    share = scales.micro_share
    metrics = {
        "loss/total": loss.detach(), "loss/pg": terms["pg"].detach(), "loss/sft": sft.detach(),
        "loss/kl": terms["kl"].detach(), "actor/entropy": terms["entropy_metric"],
        "actor/kl": terms["kl_metric"], "actor/clip_frac": terms["clip_frac"],
        "actor/dual_clip_frac": terms["dual_clip_frac"],
        "hybrid/pg_weight": zero + pg_weight * share, "hybrid/sft_weight": zero + sft_weight * share,
        "hybrid/active": zero + float(scales.hybrid_active) * share,
        "switch/sft_fraction": zero + scales.sft_fraction * share,
    }
    return loss, metrics
