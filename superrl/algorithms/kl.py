"""KL to a frozen reference policy, estimated per token from sampled-token log-probs.

With log-ratio d = log pi_theta(y_t) - log pi_ref(y_t) for y_t ~ pi_theta (Schulman, "Approximating
KL Divergence"):
    k1 = d                          unbiased, high variance, can be negative
    k2 = d^2 / 2                    biased, low variance, >= 0
    k3 = exp(-d) - 1 + d            unbiased, low variance, >= 0 ("low_var_kl" in verl)

Two uses (`algorithm.kl_in_reward`):
  * loss term (False): `hybrid_loss` adds kl_coef * aggregate(kl_per_token(...)).
  * reward penalty (True): before computing advantages, the trainer takes the per-token KL of the
    old (rollout) policy to the reference, KL_t = kl_per_token(old_logprobs, ref_logprobs), and
    `kl_penalized_rewards` folds it into the outcome reward, R - beta * sum_t KL_t per response (no
    gradient flows: it shapes the reward). The outcome advantages (grpo, rloo, reinforce_pp) then
    normalise the penalised rewards, as verl does for GRPO with kl_in_reward: its token-level
    rewards -beta * KL_t (+ R on the last token) are summed per response before the group
    statistics. A per-token estimator (GAE) would use KL_t itself.
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


def kl_penalized_rewards(rewards: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor,
                         kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward penalty: R_b - kl_coef * sum_t mask[b, t] * KL_bt, detached.

    rewards [B] (one per response; a [P, K] matrix flattened row-major), token_kl [B, T] (e.g.
    kl_per_token of the rollout policy's and the reference's log-probs), mask [B, T] on the
    response tokens. Returns (penalised rewards [B], KL per sequence [B]).
    """
    kl_per_seq = torch.where(mask.bool(), token_kl.detach(), 0.0).sum(dim=-1)
    return rewards - kl_coef * kl_per_seq.to(rewards.dtype), kl_per_seq
