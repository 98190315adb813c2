"""KL to a frozen reference policy, estimated per token from sampled-token log-probs.

With log-ratio d = log pi_theta(y_t) - log pi_ref(y_t) for y_t ~ pi_theta (Schulman, "Approximating
KL Divergence"):
    k1 = d                          unbiased, high variance, can be negative
    k2 = d^2 / 2                    biased, low variance, >= 0
    k3 = exp(-d) - 1 + d            unbiased, low variance, >= 0 ("low_var_kl" in verl)

Two uses (`algorithm.kl_in_reward`):
  * loss term (False): `hybrid_loss` adds kl_coef * aggregate(kl_per_token(...)).
  * reward penalty (True): before computing advantages, the trainer calls
    `kl_penalized_rewards(rewards, rollout_logprobs, ref_logprobs, mask, kl_coef, estimator)`,
    which returns R_k - beta * sum_t KL_t per response (no gradient flows: it shapes the reward).
"""
import torch

# exp(-d) for |d| > 20 only comes from numerically broken log-probs; clamp like verl.
_MAX_LOG_RATIO = 20.0


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """[B, T] per-token KL estimate (unmasked); differentiable w.r.t. `logprobs`. `estimator` is one
    of config.KL_ESTIMATORS (algorithm.kl_estimator, checked when the config is loaded)."""
    log_ratio = logprobs - ref_logprobs.detach()
    estimators = {"k1": lambda r: r, "k2": lambda r: 0.5 * r.square(), "k3": _k3}
    return estimators[estimator](log_ratio)  # exhaustive: an unknown name is a KeyError


def _k3(log_ratio: torch.Tensor) -> torch.Tensor:
    log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(-log_ratio) - 1.0 + log_ratio


def kl_penalized_rewards(rewards: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float, estimator: str
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward penalty: R_b - kl_coef * sum_t mask[b, t] * KL_t, detached.

    rewards [B] (one per response; a [P, K] matrix flattened row-major), logprobs [B, T] of the
    rollout policy, ref_logprobs [B, T], mask [B, T]. Returns (penalised rewards [B], KL per
    sequence [B]).
    """
    kl = kl_per_token(logprobs.detach(), ref_logprobs, estimator)
    kl_per_seq = (kl * mask.to(kl.dtype)).sum(dim=-1)
    return rewards - kl_coef * kl_per_seq.to(rewards.dtype), kl_per_seq
