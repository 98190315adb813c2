"""Outcome-reward advantages: one scalar per response (the policy loss broadcasts it to the tokens).

Input: rewards `[P, K]`, P prompts of this rank, K responses each. Output: advantages `[P, K]`
(flatten row-major to match responses `[P * K]`). Standard deviations use Bessel's correction
(torch.std's default, as in verl/TRL) and are 0 for a single sample.

Responses whose rewards carry no signal get advantage exactly 0, never NaN: for grpo and rloo a
group whose K rewards are all equal (std 0), for reinforce_pp a DP-global batch whose rewards are
all equal. The arithmetic alone would give values like 1e-11 there (a mean of 0.1s is not exactly
0.1 in floating point, and eps keeps the division finite), so those rows are set to 0 explicitly.
"""
import torch
import torch.distributed as dist

from superrl.algorithms.counts import ProcessGroup, all_reduce_sum, comm_device, count_vector


def _check_rewards(rewards: torch.Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_prompts, K], got shape {tuple(rewards.shape)}")


def _unbiased_std(values: torch.Tensor, dim: int) -> torch.Tensor:
    return values.std(dim=dim, correction=1 if values.shape[dim] > 1 else 0)


def _zero_where_all_equal(advantages: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Exact 0 for every group (row) whose rewards are all equal."""
    all_equal = rewards.amax(dim=1) == rewards.amin(dim=1)
    return advantages.masked_fill(all_equal[:, None], 0.0)


def _global_rewards_all_equal(rewards: torch.Tensor, group: ProcessGroup) -> bool:
    """True when every reward on every rank of `group` is the same (one MAX all-reduce)."""
    if rewards.numel():
        local = torch.stack([rewards.amax(), -rewards.amin()]).to(torch.float64)
    else:  # this rank has no rewards: it must not decide the answer
        local = torch.full((2,), -torch.inf, dtype=torch.float64)
    if group is not None:
        local = local.to(comm_device(group))
        dist.all_reduce(local, op=dist.ReduceOp.MAX, group=group)
    highest, lowest = local[0].item(), -local[1].item()
    return highest == lowest


def grpo_advantages(rewards: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """A_k = (R_k - mean_k R) / (std_k R + eps); without the std when `norm_by_std=False` (Dr.GRPO).

    A group whose rewards are all equal gets A = 0 for every response.
    """
    _check_rewards(rewards)
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if norm_by_std:
        centered = centered / (_unbiased_std(rewards, dim=1)[:, None] + eps)
    return _zero_where_all_equal(centered, rewards)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_k = R_k - mean_{j != k} R_j (leave-one-out baseline) = K / (K - 1) * (R_k - mean R)."""
    _check_rewards(rewards)
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"rloo needs K >= 2 responses per prompt, got K={k}")
    leave_one_out_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return _zero_where_all_equal(rewards - leave_one_out_mean, rewards)


def reinforce_pp_advantages(rewards: torch.Tensor, eps: float = 1e-6,
                            group: ProcessGroup = None) -> torch.Tensor:
    """REINFORCE++: A = (R - mean_B R) / (std_B R + eps) over the DP-GLOBAL batch of responses.

    The global mean/std come from all-reduced SUMs of (count, sum r, sum r^2) over `group`, so every
    rank normalises with the same statistics as a single process holding the whole batch.
    """
    _check_rewards(rewards)
    r = rewards.detach().to(torch.float64)
    local = count_vector(r.numel(), r.sum(), r.square().sum())
    count, total, total_sq = all_reduce_sum(local, group).tolist()
    if count == 0 or _global_rewards_all_equal(r, group):
        return torch.zeros_like(rewards)
    mean = total / count
    # unbiased variance from the sums; max() guards the tiny negative values of cancellation
    var = max(total_sq - count * mean * mean, 0.0) / max(count - 1.0, 1.0)
    return ((r - mean) / (var ** 0.5 + eps)).to(rewards.dtype)


def compute_advantages(rewards: torch.Tensor, estimator: str, norm_by_std: bool = True,
                       eps: float = 1e-6, group: ProcessGroup = None) -> torch.Tensor:
    """Dispatch on `algorithm.advantage` (one of config.ADVANTAGE_ESTIMATORS, checked when the
    config is loaded); rewards [P, K] -> advantages [P, K]."""
    estimators = {"grpo": lambda: grpo_advantages(rewards, norm_by_std=norm_by_std, eps=eps),
                  "rloo": lambda: rloo_advantages(rewards),
                  "reinforce_pp": lambda: reinforce_pp_advantages(rewards, eps=eps, group=group)}
    return estimators[estimator]()  # exhaustive: an unknown name is a KeyError, never another estimator

