"""Config dataclasses of the `algorithm.*` YAML section, and the one list of each choice.

The trainer's schema (`superrl/config.py`) embeds `AlgorithmConfig` as its `algorithm` field; every
class here is an OmegaConf-compatible structured config. `validate()` raises a ValueError that names
the offending key and value; `superrl.config.load_config` runs it, so the functions that take these
choices (advantages, aggregation, KL) do not check them again on every call.
"""
from dataclasses import dataclass, field
from typing import Optional, Sequence

ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "gae")  # gae: per token, with a critic (gae.py)
POLICY_LOSSES = ("ppo_clip", "gspo", "cispo")
ROLLOUT_CORRECTIONS = ("none", "tis", "mis", "seq_tis")
LOSS_AGG_MODES = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")
KL_ESTIMATORS = ("k1", "k2", "k3")
SWITCH_MODES = ("off", "always_sft", "probe", "per_prompt", "adv_gate", "window")
SWITCH_ROUTES = ("all", "failed")
HYBRID_WEIGHTINGS = ("hard_gate", "fixed", "log_sigma", "entropy")


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {list(choices)}")


def _check(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid: {rule}")


@dataclass
class SwitchConfig:
    """`algorithm.switch.*`: when (and for which prompts) the Hybrid Actor adds the SFT loss.

    mode:            off | always_sft | probe | per_prompt | adv_gate | window (see switch.py).
    eps:             a reward (or |advantage| for adv_gate) counts as nonzero when > eps.
    route:           in the regime modes (always_sft, probe, window) which prompts go to SFT while
                     the hybrid regime is on: `all`, or only `failed` ones (max_k R_k <= eps).
    probe_prompts:   number of prompts the trainer rolls out for the `probe` decision.
    probe_threshold: probe says "sparse" (hybrid on for the whole run) when the fraction of probe
                     prompts with any reward > eps is below this.
    tau_on, tau_off: `window` hysteresis: hybrid turns on when EMA(success) < tau_on, off when
                     EMA(success) > tau_off.
    ema_decay:       ema <- decay * ema + (1 - decay) * success_rate (first step: ema = rate).
    per_source:      `window` keeps one EMA and one on/off state per `data_source`.
    """
    mode: str = "off"
    eps: float = 1e-6
    route: str = "all"
    probe_prompts: int = 64
    probe_threshold: float = 0.2
    tau_on: float = 0.1
    tau_off: float = 0.3
    ema_decay: float = 0.9
    per_source: bool = False

    def validate(self) -> None:
        check_choice("algorithm.switch.mode", self.mode, SWITCH_MODES)
        check_choice("algorithm.switch.route", self.route, SWITCH_ROUTES)
        _check(self.eps >= 0, "algorithm.switch.eps", self.eps, "must be >= 0")
        _check(self.probe_prompts >= 1, "algorithm.switch.probe_prompts", self.probe_prompts,
               "must be >= 1")
        _check(0 <= self.probe_threshold <= 1, "algorithm.switch.probe_threshold",
               self.probe_threshold, "must be in [0, 1]")
        _check(0 <= self.ema_decay < 1, "algorithm.switch.ema_decay", self.ema_decay,
               "must be in [0, 1)")
        _check(0 <= self.tau_on < self.tau_off <= 1, "algorithm.switch.tau_on",
               (self.tau_on, self.tau_off), "need 0 <= tau_on < tau_off <= 1 (hysteresis)")


@dataclass
class HybridConfig:
    """`algorithm.hybrid.*`: how L_PG and L_SFT combine while the hybrid regime is active.

    weighting:          hard_gate | fixed | log_sigma | entropy (see hybrid.py).
    sft_coef:           lambda of `hard_gate` and `fixed`.
    log_sigma_floor:    lower bound on s_pg and s_sft; without it s -> -inf when a loss term <= 0.
    log_sigma_init_pg:  initial s_pg.
    log_sigma_init_sft: initial s_sft.
    entropy_alpha:      alpha of `entropy`: SFT weight w = alpha * exp(-H).
    """
    weighting: str = "hard_gate"
    sft_coef: float = 1.0
    log_sigma_floor: float = 0.0
    log_sigma_init_pg: float = 0.0
    log_sigma_init_sft: float = 1.0
    entropy_alpha: float = 1.0

    def validate(self) -> None:
        check_choice("algorithm.hybrid.weighting", self.weighting, HYBRID_WEIGHTINGS)
        _check(self.sft_coef >= 0, "algorithm.hybrid.sft_coef", self.sft_coef, "must be >= 0")
        _check(self.entropy_alpha >= 0, "algorithm.hybrid.entropy_alpha", self.entropy_alpha,
               "must be >= 0")
        for key in ("log_sigma_init_pg", "log_sigma_init_sft"):
            value = getattr(self, key)
            _check(value >= self.log_sigma_floor, f"algorithm.hybrid.{key}", value,
                   f"must be >= log_sigma_floor={self.log_sigma_floor}")


@dataclass
class AlgorithmConfig:
    """`algorithm.*`: advantages, policy loss, rollout correction, KL, entropy bonus, switch, hybrid actor.

    advantage:    grpo | rloo | reinforce_pp | gae (per-token GAE with a critic, `critic.*`).
    gamma, lam:   GAE's discount and trace decay (gae only; verl's defaults 1.0 and 1.0).
    norm_by_std:  grpo divides by the group std (False: Dr.GRPO, mean-centering only).
    adv_eps:      eps in A = (R - mean) / (std + eps).
    policy_loss:  ppo_clip | gspo | cispo (policy_loss.py; docs/policy_losses.md).
    clip_low, clip_high: the clip range [1 - clip_low, 1 + clip_high] of the policy loss's ratio:
                  PPO's token ratio (DAPO clip-higher), GSPO's sequence ratio, CISPO's IS weight.
    dual_clip:    None (off) or c > 1: for A < 0 the per-token loss is capped at -A * c (ppo_clip).
    loss_agg:     token_mean | seq_mean_token_sum | seq_mean_token_mean, for PG, SFT, KL, entropy.
    rollout_correction: none | tis | mis | seq_tis: the per-token PG loss is weighted by the
                  trainer-vs-engine probability ratio of the sampled tokens (rollout_correction.py).
    rollout_correction_cap: C of the correction: tis/seq_tis truncate the weight at C, mis masks
                  tokens whose ratio lies outside [1/C, C].
    mask_truncated: responses that hit rollout.max_tokens without EOS are left out of L_PG and its
                  normaliser (DAPO's overlong filtering).
    kl_coef:      beta of the KL to the frozen reference policy (0: no KL, no reference needed).
    kl_estimator: k1 | k2 | k3.
    kl_in_reward: True: subtract beta * sum_t KL_t (old policy vs reference) from each response's
                  reward before the advantages; False: add beta * KL as a loss term.
    entropy_coef: entropy bonus; the loss gets -entropy_coef * aggregated token entropy.
    ppo_mini_batches: optimizer steps per rollout batch; each takes a contiguous 1/M of every DP
                  rank's prompts, normalised by its own global counts (verl's ppo_mini_batch_size).
    ppo_epochs:   passes over the mini-batches (the old log-probs stay those of the rollout policy).
    recompute_old_logprobs: take the old log-probs from a separate forward before the update even
                  when one optimizer step per batch makes them equal to the training forward's.
    skip_zero_weight_rows: rollout rows whose weight in the loss is exactly zero (SFT-routed
                  prompts under hard_gate, zero-advantage groups) are not forwarded at all.
    """
    advantage: str = "grpo"
    gamma: float = 1.0
    lam: float = 1.0
    norm_by_std: bool = True
    adv_eps: float = 1e-6
    policy_loss: str = "ppo_clip"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: Optional[float] = None
    loss_agg: str = "token_mean"
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0  # verl's rollout_is_threshold and the TIS blog's C
    mask_truncated: bool = False
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in_reward: bool = False
    entropy_coef: float = 0.0
    ppo_mini_batches: int = 1
    ppo_epochs: int = 1
    recompute_old_logprobs: bool = False
    skip_zero_weight_rows: bool = True
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)

    def validate(self) -> None:
        check_choice("algorithm.advantage", self.advantage, ADVANTAGE_ESTIMATORS)
        check_choice("algorithm.policy_loss", self.policy_loss, POLICY_LOSSES)
        check_choice("algorithm.loss_agg", self.loss_agg, LOSS_AGG_MODES)
        check_choice("algorithm.rollout_correction", self.rollout_correction, ROLLOUT_CORRECTIONS)
        check_choice("algorithm.kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _check(self.adv_eps >= 0, "algorithm.adv_eps", self.adv_eps, "must be >= 0")
        _check(0 <= self.gamma <= 1, "algorithm.gamma", self.gamma, "must be in [0, 1]")
        _check(0 <= self.lam <= 1, "algorithm.lam", self.lam, "must be in [0, 1]")
        _check(0 <= self.clip_low < 1, "algorithm.clip_low", self.clip_low, "must be in [0, 1)")
        _check(self.clip_high >= 0, "algorithm.clip_high", self.clip_high, "must be >= 0")
        _check(self.dual_clip is None or self.dual_clip > 1, "algorithm.dual_clip",
               self.dual_clip, "must be null (off) or > 1")
        _check(self.dual_clip is None or self.policy_loss == "ppo_clip", "algorithm.dual_clip",
               self.dual_clip, f"caps PPO's token ratio, so it needs policy_loss=ppo_clip "
               f"(policy_loss={self.policy_loss!r})")
        _check(self.rollout_correction_cap > 1, "algorithm.rollout_correction_cap",
               self.rollout_correction_cap, "must be > 1 (tis/seq_tis truncate at C, mis keeps [1/C, C])")
        _check(self.kl_coef >= 0, "algorithm.kl_coef", self.kl_coef, "must be >= 0")
        _check(self.entropy_coef >= 0, "algorithm.entropy_coef", self.entropy_coef,
               "must be >= 0")
        _check(self.ppo_mini_batches >= 1, "algorithm.ppo_mini_batches", self.ppo_mini_batches, "must be >= 1")
        _check(self.ppo_epochs >= 1, "algorithm.ppo_epochs", self.ppo_epochs, "must be >= 1")
        self.switch.validate()
        self.hybrid.validate()
