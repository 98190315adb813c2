"""Hybrid Actor loss: hand-computed values per weighting, a float64 naive reference, and exact
micro-batch additivity of losses and gradients."""
import math
import statistics

import pytest
import torch

from superrl.algorithms import (AdaptiveSwitch, AlgorithmConfig, ExpertTokens, HybridConfig,
                                LogSigmaWeights, RolloutTokens, SwitchConfig, build_loss_scales,
                                hybrid_loss)

F64 = torch.float64

# ---------------------------------------------------------------- hand-computed case
# 2 prompts x 2 responses, ratio 1 everywhere so the per-token PG loss is -A.
#   prompt 0 (solved -> PG):  row0 2 tokens A=+1, row1 1 token A=-1
#   prompt 1 (failed -> SFT): row2, row3 1 token each, A=0; expert y* log-probs [-1, -2]


def _hand_batch(mode="per_prompt"):
    decision = AdaptiveSwitch(SwitchConfig(mode=mode)).decide(
        torch.tensor([[1.0, 0.0], [0.0, 0.0]]), step=0)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=F64)
    rollout = RolloutTokens(logprobs=torch.zeros(4, 2, dtype=F64, requires_grad=True),
                            old_logprobs=torch.zeros(4, 2, dtype=F64),
                            advantages=torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=F64), mask=mask)
    expert = ExpertTokens(logprobs=torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True),
                          mask=torch.ones(1, 2, dtype=F64))
    return decision, rollout, expert


def _hand_loss(weighting, mode="per_prompt", loss_agg="token_mean", log_sigma=None):
    cfg = AlgorithmConfig(loss_agg=loss_agg, hybrid=HybridConfig(weighting=weighting, sft_coef=0.5))
    decision, rollout, expert = _hand_batch(mode)
    scales = build_loss_scales(cfg, decision, rollout.mask, torch.tensor([0, 0, 1, 1]), expert.mask,
                               torch.tensor([1]), policy_entropy=0.5)
    loss, metrics = hybrid_loss(cfg, scales, rollout, expert, log_sigma)
    loss.backward()
    return loss.item(), metrics, rollout.logprobs.grad, expert.logprobs.grad


@pytest.mark.parametrize("weighting,loss_agg,expected", [
    # 1/2 [ (-1-1+1)/3 + 0.5 * (1+2)/2 ]
    ("hard_gate", "token_mean", 0.5 * (-1 / 3) + 0.5 * 0.5 * 1.5),
    # 1/2 [ mean(-1, +1) + 0.5 * 1.5 ]
    ("hard_gate", "seq_mean_token_mean", 0.5 * 0.0 + 0.5 * 0.5 * 1.5),
    # L_PG over all 5 rollout tokens = -1/5
    ("fixed", "token_mean", -0.2 + 0.5 * 1.5),
    ("log_sigma", "token_mean", math.exp(0) * -0.2 + math.exp(-2) * 1.5 + 0.0 + 1.0),
    ("entropy", "token_mean", -0.2 + 1.0 * math.exp(-0.5) * 1.5),
])
def test_hand_computed_weightings(weighting, loss_agg, expected):
    log_sigma = LogSigmaWeights(floor=0.0, init_pg=0.0, init_sft=1.0).double()
    loss, metrics, _, _ = _hand_loss(weighting, loss_agg=loss_agg, log_sigma=log_sigma)
    assert loss == pytest.approx(expected, abs=1e-12)
    assert metrics["loss/total"].item() == pytest.approx(expected, abs=1e-12)
    assert metrics["loss/sft"].item() == pytest.approx(0.75 if weighting == "hard_gate" else 1.5)
    assert metrics["switch/sft_fraction"].item() == 0.5
    assert metrics["actor/clip_frac"].item() == 0.0
    assert metrics["hybrid/active"].item() == 1.0


def test_hand_computed_hard_gate_gradients():
    _, _, grad, expert_grad = _hand_loss("hard_gate")
    # d/dlogp of c(x)/(P n_x) * (-A * ratio): 1/(2*3) * -A for prompt 0, 0 for the SFT prompt
    expected = torch.tensor([[-1 / 6, -1 / 6], [1 / 6, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)
    # -lambda / (P * |y*|)
    torch.testing.assert_close(expert_grad, torch.full((1, 2), -0.5 / 4, dtype=F64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("weighting", ["hard_gate", "fixed", "log_sigma", "entropy"])
def test_dense_switch_is_plain_rl_for_every_weighting(weighting):
    loss, metrics, _, expert_grad = _hand_loss(weighting, mode="off", log_sigma=LogSigmaWeights())
    assert loss == pytest.approx(-0.2, abs=1e-12)
    assert metrics["hybrid/active"].item() == 0.0 and metrics["loss/sft"].item() == 0.0
    assert torch.all(expert_grad == 0)


def test_log_sigma_floor_and_gradients():
    module = LogSigmaWeights(floor=0.0, init_pg=0.0, init_sft=1.0)
    loss = module(torch.tensor(-0.2), torch.tensor(1.5))
    loss.backward()
    # dL/ds = -2 exp(-2s) L + 1
    assert module.s_pg.grad.item() == pytest.approx(-2 * -0.2 + 1)
    assert module.s_sft.grad.item() == pytest.approx(-2 * math.exp(-2) * 1.5 + 1)
    with torch.no_grad():
        module.s_pg.fill_(-3.0)  # below the floor: clamped, no gradient pushes it further down
    assert module.weights()[0].item() == pytest.approx(1.0)
    assert set(module.state_dict()) == {"s_pg", "s_sft"}
    with pytest.raises(ValueError, match="floor"):
        LogSigmaWeights(floor=0.5, init_pg=0.0)


def test_missing_inputs_raise_clear_errors():
    cfg = AlgorithmConfig(hybrid=HybridConfig(weighting="entropy"))
    decision, rollout, expert = _hand_batch()
    with pytest.raises(ValueError, match="policy_entropy"):
        build_loss_scales(cfg, decision, rollout.mask, torch.tensor([0, 0, 1, 1]), expert.mask,
                          torch.tensor([1]))
    with pytest.raises(ValueError, match=r"local prompts \[1\] are routed to SFT"):
        build_loss_scales(cfg, decision, rollout.mask, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="prompt_index"):
        build_loss_scales(cfg, decision, rollout.mask, torch.tensor([0, 0, 1, 2]), expert.mask,
                          torch.tensor([1]), policy_entropy=1.0)
    cfg = AlgorithmConfig(kl_coef=0.1)
    scales = build_loss_scales(cfg, decision, rollout.mask, torch.tensor([0, 0, 1, 1]), expert.mask,
                               torch.tensor([1]))
    with pytest.raises(ValueError, match="ref_logprobs"):
        hybrid_loss(cfg, scales, rollout, expert)
    with pytest.raises(ValueError, match="rows"):
        hybrid_loss(cfg, scales.rows(slice(0, 2)), rollout, expert)

# ---------------------------------------------------------------- random batch vs naive reference

P, K, T, TE = 4, 3, 5, 6
GATES = [True, False, True, False]  # prompts 1 and 3 routed to SFT


def random_batch(seed: int = 0) -> dict:
    """A local batch: P prompts x K responses, expert rows for prompts 1, 3 and (ignored) 0."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=F64) * scale

    lengths = torch.randint(1, T + 1, (P * K,), generator=gen)
    lengths[4] = 0  # an empty response row
    expert_lengths = torch.tensor([3, 6, 2])
    return {
        "logprobs": rand(P * K, T, scale=0.3) - 1.0,
        "old_logprobs": rand(P * K, T, scale=0.3) - 1.0,
        "ref_logprobs": rand(P * K, T, scale=0.3) - 1.0,
        "entropy": rand(P * K, T).abs(),
        "advantages": rand(P * K),
        "mask": (torch.arange(T)[None, :] < lengths[:, None]).to(F64),
        "prompt_index": torch.arange(P).repeat_interleave(K),
        "expert_logprobs": rand(3, TE, scale=0.5) - 2.0,
        "expert_mask": (torch.arange(TE)[None, :] < expert_lengths[:, None]).to(F64),
        "expert_prompt_index": torch.tensor([1, 3, 0]),
    }


def random_cfg(weighting: str, loss_agg: str) -> AlgorithmConfig:
    return AlgorithmConfig(loss_agg=loss_agg, clip_low=0.1, clip_high=0.15, dual_clip=2.0,
                           kl_coef=0.05, entropy_coef=0.01,
                           hybrid=HybridConfig(weighting=weighting, sft_coef=0.7, entropy_alpha=0.9,
                                               log_sigma_floor=-0.5))


def make_decision(gates=GATES, num_prompts=P):
    """A SwitchDecision for fixed gates (the switch itself is tested in test_algorithms_switch)."""
    rewards = torch.tensor([[1.0] if g else [0.0] for g in gates])
    decision = AdaptiveSwitch(SwitchConfig(mode="per_prompt")).decide(rewards, step=0)
    decision.num_prompts = num_prompts
    decision.sft_fraction = (num_prompts - sum(gates)) / num_prompts
    return decision


def _valid(values, mask):
    return [[v for v, m in zip(vr, mr) if m] for vr, mr in zip(values.tolist(), mask.tolist())]


def _naive_agg(rows, loss_agg):
    rows = [r for r in rows if r]
    if not rows:
        return 0.0
    if loss_agg == "token_mean":
        return sum(map(sum, rows)) / sum(map(len, rows))
    if loss_agg == "seq_mean_token_sum":
        return statistics.fmean(map(sum, rows))
    return statistics.fmean(map(statistics.fmean, rows))


def _naive_ppo(logp, old, adv, cfg):
    ratio = math.exp(logp - old)
    loss = max(-adv * ratio, -adv * min(max(ratio, 1 - cfg.clip_low), 1 + cfg.clip_high))
    return min(loss, -adv * cfg.dual_clip) if adv < 0 else loss


def naive_hybrid_loss(cfg, batch, gates, s_pg=0.0, s_sft=1.0, entropy_h=0.8):
    """Independent float64 loop implementation of the weightings in hybrid.py's docstring, on the whole batch."""
    b = batch
    ppo_rows = [[_naive_ppo(lp, old, a, cfg) for lp, old in zip(lr, orow)]
                for lr, orow, a in zip(_valid(b["logprobs"], b["mask"]),
                                       _valid(b["old_logprobs"], b["mask"]), b["advantages"].tolist())]
    kl_rows = [[math.exp(r - lp) - 1 - (r - lp) for lp, r in zip(lr, rr)]
               for lr, rr in zip(_valid(b["logprobs"], b["mask"]), _valid(b["ref_logprobs"], b["mask"]))]
    nll_rows = [[-x for x in row] for row in _valid(b["expert_logprobs"], b["expert_mask"])]
    prompt_of, expert_prompt_of = b["prompt_index"].tolist(), b["expert_prompt_index"].tolist()
    sft_rows = [row for row, x in zip(nll_rows, expert_prompt_of) if not gates[x]]
    agg, lam = cfg.loss_agg, cfg.hybrid.sft_coef
    pg, sft = _naive_agg(ppo_rows, agg), _naive_agg(sft_rows, agg)
    active = len(sft_rows) > 0
    weighting = cfg.hybrid.weighting
    if not active:
        loss = pg
    elif weighting == "hard_gate":
        per_prompt = []
        for x, gate in enumerate(gates):
            if gate:
                per_prompt.append(_naive_agg([r for r, p in zip(ppo_rows, prompt_of) if p == x], agg))
            else:
                per_prompt.append(lam * _naive_agg([r for r, p in zip(nll_rows, expert_prompt_of) if p == x], agg))
        loss = statistics.fmean(per_prompt)
    elif weighting == "fixed":
        loss = pg + lam * sft
    elif weighting == "entropy":
        loss = pg + cfg.hybrid.entropy_alpha * math.exp(-entropy_h) * sft
    else:
        s_pg, s_sft = max(s_pg, cfg.hybrid.log_sigma_floor), max(s_sft, cfg.hybrid.log_sigma_floor)
        loss = math.exp(-2 * s_pg) * pg + math.exp(-2 * s_sft) * sft + s_pg + s_sft
    entropy = _naive_agg(_valid(b["entropy"], b["mask"]), agg)
    return loss + cfg.kl_coef * _naive_agg(kl_rows, agg) - cfg.entropy_coef * entropy


def run_micro_batches(cfg, batch, decision, rollout_splits, expert_splits, *, group=None,
                      log_sigma=None, entropy_h=0.8):
    """Leaf copies of the log-probs, the summed micro-batch losses, their grads, summed metrics."""
    logprobs = batch["logprobs"].clone().requires_grad_()
    expert_logprobs = batch["expert_logprobs"].clone().requires_grad_()
    scales = build_loss_scales(cfg, decision, batch["mask"], batch["prompt_index"],
                               batch["expert_mask"], batch["expert_prompt_index"],
                               num_micro_batches=len(rollout_splits), group=group,
                               policy_entropy=entropy_h, pg_rows=batch.get("pg_rows"))
    engine = batch.get("engine_logprobs")  # for algorithm.rollout_correction
    total, metrics = 0.0, {}
    for rows, erows in zip(rollout_splits, expert_splits):
        rollout = RolloutTokens(logprobs=logprobs[rows], old_logprobs=batch["old_logprobs"][rows],
                                advantages=batch["advantages"][rows], mask=batch["mask"][rows],
                                entropy=batch["entropy"][rows], ref_logprobs=batch["ref_logprobs"][rows],
                                engine_logprobs=None if engine is None else engine[rows])
        expert = ExpertTokens(logprobs=expert_logprobs[erows], mask=batch["expert_mask"][erows])
        loss, mb_metrics = hybrid_loss(cfg, scales.rows(rows, erows), rollout, expert, log_sigma)
        loss.backward()
        total = total + loss.detach()
        for key, value in mb_metrics.items():
            metrics[key] = metrics.get(key, 0.0) + value
    return total, logprobs.grad, expert_logprobs.grad, metrics


FULL = ([slice(None)], [slice(None)])
# uneven micro-batches; one has no expert rows, one splits prompt 2's responses
SPLITS = ([slice(0, 5), slice(5, 7), slice(7, 12)], [slice(0, 2), slice(2, 2), slice(2, 3)])


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"])
@pytest.mark.parametrize("weighting", ["hard_gate", "fixed", "log_sigma", "entropy"])
def test_random_batch_matches_naive_and_micro_batches_add_up(weighting, loss_agg):
    cfg, batch, decision = random_cfg(weighting, loss_agg), random_batch(), make_decision()
    log_sigma = LogSigmaWeights(floor=-0.5, init_pg=-0.3, init_sft=0.4).double()
    full_loss, grad, expert_grad, metrics = run_micro_batches(cfg, batch, decision, *FULL,
                                                              log_sigma=log_sigma)
    # the float32 parameters' exact values (-0.3 and 0.4 are not representable)
    expected = naive_hybrid_loss(cfg, batch, GATES, s_pg=log_sigma.s_pg.item(), s_sft=log_sigma.s_sft.item())
    assert full_loss.item() == pytest.approx(expected, abs=1e-12)

    log_sigma.zero_grad()
    full_sigma_grad = None
    if weighting == "log_sigma":
        run_micro_batches(cfg, batch, decision, *FULL, log_sigma=log_sigma)
        full_sigma_grad = (log_sigma.s_pg.grad.clone(), log_sigma.s_sft.grad.clone())
        log_sigma.zero_grad()
    split_loss, split_grad, split_expert_grad, split_metrics = run_micro_batches(
        cfg, batch, decision, *SPLITS, log_sigma=log_sigma)
    assert split_loss.item() == pytest.approx(full_loss.item(), abs=1e-12)
    torch.testing.assert_close(split_grad, grad, rtol=0, atol=1e-14)
    torch.testing.assert_close(split_expert_grad, expert_grad, rtol=0, atol=1e-14)
    for key in metrics:
        assert split_metrics[key].item() == pytest.approx(metrics[key].item(), abs=1e-12), key
    if full_sigma_grad is not None:
        torch.testing.assert_close(log_sigma.s_pg.grad, full_sigma_grad[0], rtol=0, atol=1e-14)
        torch.testing.assert_close(log_sigma.s_sft.grad, full_sigma_grad[1], rtol=0, atol=1e-14)
    assert metrics["switch/sft_fraction"].item() == pytest.approx(0.5)
    assert {"loss/pg", "loss/sft", "actor/entropy", "actor/kl", "actor/clip_frac"} <= set(metrics)


def test_metrics_are_token_means():
    cfg, batch = random_cfg("fixed", "seq_mean_token_mean"), random_batch()
    _, _, _, metrics = run_micro_batches(cfg, batch, make_decision(), *SPLITS)
    mask = batch["mask"]
    entropy = (batch["entropy"] * mask).sum() / mask.sum()
    log_ratio = batch["ref_logprobs"] - batch["logprobs"]
    kl = ((log_ratio.exp() - 1 - log_ratio) * mask).sum() / mask.sum()
    assert metrics["actor/entropy"].item() == pytest.approx(entropy.item(), abs=1e-12)
    assert metrics["actor/kl"].item() == pytest.approx(kl.item(), abs=1e-12)
    assert 0 < metrics["actor/clip_frac"].item() < 1
