"""Advantages, PPO-clip, aggregation, SFT and KL against hand-computed / float64 naive references."""
import math
import statistics

import pytest
import torch

from superrl.algorithms import (aggregate, compute_advantages, global_token_counts, grpo_advantages,
                                kl_penalized_rewards, kl_per_token, ppo_clip_loss,
                                reinforce_pp_advantages, rloo_advantages, sft_loss)
from superrl.algorithms.config import AlgorithmConfig



def f64(data, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64, requires_grad=requires_grad)


# ---------------------------------------------------------------- advantages


def _rewards() -> torch.Tensor:
    return f64([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.3, 0.9, 0.1, 0.5],
                         [2.0, 2.0, 2.0, 2.0]])


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_matches_naive_loop(norm_by_std):
    rewards, eps = _rewards(), 1e-6
    got = grpo_advantages(rewards, norm_by_std=norm_by_std, eps=eps)
    for p, row in enumerate(rewards.tolist()):
        mean, std = statistics.fmean(row), statistics.stdev(row)
        for k, r in enumerate(row):
            expected = (r - mean) / (std + eps) if norm_by_std else r - mean
            assert got[p, k].item() == pytest.approx(expected, abs=1e-12)
    # all-equal groups carry no signal
    assert torch.all(got[1] == 0) and torch.all(got[3] == 0)


def test_grpo_hand_values():
    # [1, 0, 0, 1]: mean .5, unbiased std sqrt(1/3)
    got = grpo_advantages(f64([[1.0, 0.0, 0.0, 1.0]]), eps=0.0)
    assert got[0, 0].item() == pytest.approx(0.5 / math.sqrt(1 / 3))


def test_rloo_matches_naive_loop():
    rewards = _rewards()
    got = rloo_advantages(rewards)
    for p, row in enumerate(rewards.tolist()):
        for k, r in enumerate(row):
            others = row[:k] + row[k + 1:]
            assert got[p, k].item() == pytest.approx(r - sum(others) / len(others), abs=1e-12)
    with pytest.raises(ValueError, match="K=1"):
        rloo_advantages(torch.ones(3, 1))


def test_reinforce_pp_single_process_matches_naive():
    rewards, eps = _rewards(), 1e-6
    flat = rewards.flatten().tolist()
    mean, std = statistics.fmean(flat), statistics.stdev(flat)
    got = reinforce_pp_advantages(rewards, eps=eps)
    expected = f64([(r - mean) / (std + eps) for r in flat]).view_as(rewards)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(compute_advantages(rewards, "reinforce_pp", eps=eps), expected,
                               rtol=0, atol=1e-12)


def test_compute_advantages_dispatch_and_errors():
    rewards = _rewards()
    torch.testing.assert_close(compute_advantages(rewards, "rloo"), rloo_advantages(rewards))
    torch.testing.assert_close(compute_advantages(rewards, "grpo", norm_by_std=False),
                               grpo_advantages(rewards, norm_by_std=False))
    with pytest.raises(ValueError, match=r"\[num_prompts, K\]"):
        grpo_advantages(torch.ones(4))

# ---------------------------------------------------------------- PPO clip


def _ppo_case(ratio: float, adv: float, dual_clip=None):
    logprobs = f64([[math.log(ratio)]], requires_grad=True)
    out = ppo_clip_loss(logprobs, torch.zeros(1, 1, dtype=torch.float64), f64([adv]), clip_low=0.2,
                        clip_high=0.28, dual_clip=dual_clip)
    out.loss.sum().backward()
    return out.loss.item(), out.clipped.item(), out.dual_clipped.item(), logprobs.grad.item()


@pytest.mark.parametrize("ratio,adv,dual,loss,clipped,dual_clipped,grad", [
    # A > 0: upper clip at 1 + clip_high = 1.28 (clip-higher), no gradient once clipped
    (1.5, 1.0, None, -1.28, True, False, 0.0),
    (1.2, 1.0, None, -1.2, False, False, -1.2),
    (0.5, 1.0, None, -0.5, False, False, -0.5),   # pessimistic min keeps the unclipped ratio
    # A < 0: lower clip at 1 - clip_low = 0.8
    (0.5, -1.0, None, 0.8, True, False, 0.0),
    (1.5, -2.0, None, 3.0, False, False, 3.0),
    # dual clip c=3 caps A<0 tokens at -A*c
    (1.5, -2.0, 3.0, 3.0, False, False, 3.0),
    (5.0, -2.0, 3.0, 6.0, False, True, 0.0),
    (5.0, 2.0, 3.0, -2.56, True, False, 0.0),     # dual clip never touches A > 0
])
def test_ppo_clip_hand_cases(ratio, adv, dual, loss, clipped, dual_clipped, grad):
    got = _ppo_case(ratio, adv, dual)
    assert got[0] == pytest.approx(loss)
    assert got[1:3] == (clipped, dual_clipped)
    assert got[3] == pytest.approx(grad)


def test_ppo_rejects_bad_dual_clip():
    with pytest.raises(ValueError, match="dual_clip=1.0"):
        ppo_clip_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), 0.2, 0.2, dual_clip=1.0)

# ---------------------------------------------------------------- aggregation


def _batch(seed=0, rows=7, width=6):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, width, generator=gen, dtype=torch.float64)
    lengths = [1, 6, 3, 0, 2, 5, 4][:rows]  # row 3 is an empty (padding) row
    mask = f64([[1.0 if t < n else 0.0 for t in range(width)] for n in lengths])
    return values, mask


def _naive_aggregate(values, mask, loss_agg):
    rows = []
    for v, m in zip(values.tolist(), mask.tolist()):
        toks = [x for x, keep in zip(v, m) if keep]
        if toks:
            rows.append(toks)
    if loss_agg == "token_mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    if loss_agg == "seq_mean_token_sum":
        return statistics.fmean(sum(r) for r in rows)
    return statistics.fmean(statistics.fmean(r) for r in rows)


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"])
def test_aggregate_micro_batches_and_dp_shards_sum_to_full_batch(loss_agg):
    values, mask = _batch()
    denom = global_token_counts(mask).denominator(loss_agg)
    full = aggregate(values, mask, loss_agg, denom)
    assert full.item() == pytest.approx(_naive_aggregate(values, mask, loss_agg), abs=1e-12)
    # two fake DP shards (rows 0..3 / 4..6), each split into uneven micro-batches
    micro_batches = [slice(0, 1), slice(1, 4), slice(4, 6), slice(6, 7)]
    total = sum(aggregate(values[mb], mask[mb], loss_agg, denom) for mb in micro_batches)
    assert total.item() == pytest.approx(full.item(), abs=1e-12)
    # an average of per-micro-batch means is NOT the full-batch mean (the test is sensitive)
    local = [aggregate(values[mb], mask[mb], loss_agg, global_token_counts(mask[mb]).denominator(loss_agg))
             for mb in micro_batches]
    assert abs(sum(local).item() / len(local) - full.item()) > 1e-3


def test_aggregate_per_row_denominators_and_empty_batch():
    values, mask = f64([[1.0, 2.0], [4.0, 0.0]]), f64([[1.0, 1.0], [1.0, 0.0]])
    got = aggregate(values, mask, "token_mean", f64([6.0, 2.0]))
    assert got.item() == pytest.approx(3 / 6 + 4 / 2)
    assert aggregate(values, torch.zeros(2, 2), "token_mean", 0).item() == 0.0


def test_sft_loss_is_token_mean_nll():
    logprobs = f64([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]], requires_grad=True)
    mask = f64([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss = sft_loss(logprobs, mask, "token_mean", global_token_counts(mask).denominator("token_mean"))
    assert loss.item() == pytest.approx((1 + 2 + 0.5) / 3)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, -mask / 3)

# ---------------------------------------------------------------- KL


def _naive_kl(logp: float, ref: float, estimator: str) -> float:
    p_over_ref = math.exp(logp) / math.exp(ref)
    if estimator == "k1":
        return math.log(p_over_ref)
    if estimator == "k2":
        return 0.5 * math.log(p_over_ref) ** 2
    return 1.0 / p_over_ref - 1.0 - math.log(1.0 / p_over_ref)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_match_float64_formulas(estimator):
    logp = f64([[-0.1, -2.3, -0.7], [-4.0, -0.01, -1.5]])
    ref = f64([[-0.3, -1.1, -0.7], [-2.0, -0.2, -3.5]])
    got = kl_per_token(logp.float(), ref.float(), estimator)  # float32 path vs float64 formula
    expected = [[_naive_kl(a, b, estimator) for a, b in zip(r1, r2)]
                for r1, r2 in zip(logp.tolist(), ref.tolist())]
    torch.testing.assert_close(got.double(), f64(expected), rtol=1e-5, atol=1e-6)
    assert got[0, 2].item() == 0.0  # identical policies: zero KL for every estimator


def test_kl_reward_penalty_subtracts_beta_sum_per_sequence():
    logp = f64([[-0.1, -2.3, -0.7], [-4.0, -0.01, -1.5]])
    ref = f64([[-0.3, -1.1, -0.7], [-2.0, -0.2, -3.5]])
    mask = f64([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards = f64([1.0, 0.0])
    got, kl_seq = kl_penalized_rewards(rewards, kl_per_token(logp, ref, "k3"), mask, kl_coef=0.1)
    for b in range(2):
        kl = sum(_naive_kl(a, r, "k3") for a, r, m in
                 zip(logp[b].tolist(), ref[b].tolist(), mask[b].tolist()) if m)
        assert kl_seq[b].item() == pytest.approx(kl, abs=1e-12)
        assert got[b].item() == pytest.approx(rewards[b].item() - 0.1 * kl, abs=1e-12)


def test_algorithm_config_errors_name_the_key():
    AlgorithmConfig().validate()
    # the only check of these choices: the functions that take them trust the loaded config
    for field, value, key in [("advantage", "ppo", "algorithm.advantage"),
                              ("loss_agg", "sum", "algorithm.loss_agg"),
                              ("clip_low", 1.0, "algorithm.clip_low"),
                              ("dual_clip", 0.5, "algorithm.dual_clip"),
                              ("kl_estimator", "k4", "algorithm.kl_estimator")]:
        with pytest.raises(ValueError, match=key):
            AlgorithmConfig(**{field: value}).validate()
