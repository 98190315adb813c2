"""GAE, DP-global whitening and the clipped value loss against hand-computed values and float64
naive loops written independently of superrl.algorithms.gae / value_loss."""
import math
import random

import pytest
import torch

from superrl.algorithms.gae import gae, outcome_token_rewards, whiten
from superrl.algorithms.value_loss import clipped_value_loss
from test_algorithms_dp import run_threads


def f64(data) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def test_gae_four_token_example_by_hand():
    # One row: 2 prompt positions, 4 response tokens, 1 padding position.
    # gamma = 1, lam = 0.5, V = 0.5 on every response token, R = 1 on the last.
    #   deltas (t = 3..0): 1 + 0 - .5 = .5, 0 + .5 - .5 = 0, 0, 0
    #   A_3 = .5, A_2 = 0 + .5 * .5 = .25, A_1 = .125, A_0 = .0625; G = A + V
    mask = f64([[0, 0, 1, 1, 1, 1, 0]])
    values = f64([[9, 9, 0.5, 0.5, 0.5, 0.5, 9]])  # off-mask values must not matter
    rewards = outcome_token_rewards(f64([1.0]), mask)
    assert rewards.tolist() == [[0, 0, 0, 0, 0, 1, 0]]
    out = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert out.advantages.tolist() == [[0, 0, 0.0625, 0.125, 0.25, 0.5, 0]]
    assert out.returns.tolist() == [[0, 0, 0.5625, 0.625, 0.75, 1.0, 0]]


def test_gae_four_token_example_with_kl_in_reward_by_hand():
    # As above with beta = 0.1 and KL_t = [.2, 0, .4, 0]: r = [-.02, 0, -.04, 1]
    #   deltas (t = 3..0): .5, -.04, 0, -.02
    #   A_3 = .5, A_2 = -.04 + .25 = .21, A_1 = 0 + .105, A_0 = -.02 + .0525 = .0325
    mask = f64([[1, 1, 1, 1]])
    rewards = outcome_token_rewards(f64([1.0]), mask, token_kl=f64([[0.2, 0.0, 0.4, 0.0]]), kl_coef=0.1)
    torch.testing.assert_close(rewards, f64([[-0.02, 0, -0.04, 1]]), rtol=0, atol=1e-15)
    out = gae(rewards, torch.full((1, 4), 0.5, dtype=torch.float64), mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(out.advantages, f64([[0.0325, 0.105, 0.21, 0.5]]), rtol=0, atol=1e-15)


def _naive_gae(reward: float, values: list, kl: list, beta: float, gamma: float, lam: float) -> tuple:
    """One response as python floats: the textbook definition, A_t = sum_l (gamma lam)^l delta_{t+l}."""
    n = len(values)
    r = [-beta * kl[t] + (reward if t == n - 1 else 0.0) for t in range(n)]
    delta = [r[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    adv = [sum((gamma * lam) ** l * delta[t + l] for l in range(n - t)) for t in range(n)]
    return adv, [a + v for a, v in zip(adv, values)]


def _random_rows(seed: int, rows: int = 6, width: int = 12):
    """Rows with a random prompt offset and response length (one of them empty)."""
    rng = random.Random(seed)
    mask = torch.zeros(rows, width, dtype=torch.float64)
    for b in range(rows):
        start, length = rng.randrange(0, 4), 0 if b == 2 else rng.randrange(1, width - 4)
        mask[b, start:start + length] = 1
    gen = torch.Generator().manual_seed(seed)
    return (mask, torch.randn(rows, width, generator=gen, dtype=torch.float64),
            torch.rand(rows, width, generator=gen, dtype=torch.float64), torch.randn(rows, generator=gen,
                                                                                    dtype=torch.float64))


@pytest.mark.parametrize("gamma,lam,beta", [(1.0, 1.0, 0.0), (0.99, 0.95, 0.05), (0.7, 0.3, 0.5)])
def test_gae_matches_naive_per_response(gamma, lam, beta):
    mask, values, kl, rewards = _random_rows(seed=int(gamma * 100))
    out = gae(outcome_token_rewards(rewards, mask, kl, beta), values, mask, gamma, lam)
    for b in range(mask.shape[0]):
        idx = mask[b].nonzero().squeeze(1).tolist()
        adv, ret = _naive_gae(rewards[b].item(), values[b, idx].tolist(), kl[b, idx].tolist(), beta, gamma, lam)
        assert out.advantages[b, idx].tolist() == pytest.approx(adv, abs=1e-12)
        assert out.returns[b, idx].tolist() == pytest.approx(ret, abs=1e-12)
    assert (out.advantages[mask == 0] == 0).all() and (out.returns[mask == 0] == 0).all()


def _naive_whiten(values: list, eps: float) -> list:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return [(v - mean) / math.sqrt(var + eps) for v in values]


def test_whiten_over_the_dp_global_batch_equals_one_process():
    mask, values, _, _ = _random_rows(seed=3, rows=8)
    flat = values[mask > 0].tolist()
    full = whiten(values, mask)
    assert full[mask > 0].tolist() == pytest.approx(_naive_whiten(flat, 1e-8), abs=1e-12)
    assert (full[mask == 0] == 0).all()
    # two DP ranks, each with 4 rows: the same numbers as one process with all 8
    shards = run_threads(lambda rank, group: whiten(values[4 * rank:4 * rank + 4], mask[4 * rank:4 * rank + 4],
                                                    group=group))
    torch.testing.assert_close(torch.cat(shards), full, rtol=0, atol=1e-14)


def test_whiten_of_no_tokens_is_zero():
    assert whiten(torch.ones(2, 3), torch.zeros(2, 3)).eq(0).all()


def test_clipped_value_loss_by_hand_and_gradient():
    # c = 0.2; V_old = 1 on every token
    #   V = 1.5, G = 2: V_clip = 1.2; (V-G)^2 = .25 < (V_clip-G)^2 = .64 -> clipped, 0.32, grad 0
    #   V = 1.5, G = 1: V_clip = 1.2; .25 > .04 -> unclipped, 0.125, grad V - G = .5
    #   V = 0.9, G = 1: inside the range; .01 = .01 -> unclipped, 0.005, grad -.1
    values = f64([[1.5, 1.5, 0.9]]).requires_grad_()
    out = clipped_value_loss(values, torch.ones(1, 3, dtype=torch.float64), f64([[2.0, 1.0, 1.0]]), 0.2)
    torch.testing.assert_close(out.loss.detach(), f64([[0.32, 0.125, 0.005]]), rtol=0, atol=1e-15)
    assert out.clipped.tolist() == [[True, False, False]]
    out.loss.sum().backward()
    torch.testing.assert_close(values.grad, f64([[0.0, 0.5, -0.1]]), rtol=0, atol=1e-15)


def test_clipped_value_loss_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    values, old, returns = (torch.randn(4, 7, generator=gen, dtype=torch.float64) for _ in range(3))
    c = 0.3
    out = clipped_value_loss(values, old, returns, c)
    for v, o, g, got in zip(values.flatten().tolist(), old.flatten().tolist(), returns.flatten().tolist(),
                            out.loss.flatten().tolist()):
        clipped = min(max(v, o - c), o + c)
        assert got == pytest.approx(0.5 * max((v - g) ** 2, (clipped - g) ** 2), abs=1e-14)
