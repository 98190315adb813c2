"""GSPO, CISPO, the rollout corrections (TIS, MIS, sequence TIS), DAPO's overlong penalty and the
truncated-response mask, each against hand-computed cases and a float64 reference written as a
naive loop from the papers' formulas (independently of the implementation's tensor code)."""
import dataclasses
import math

import pytest
import torch

from superrl.algorithms import (AlgorithmConfig, HybridConfig, aggregate, cispo_loss, correction_metrics,
                                correction_weights, global_token_counts, gspo_loss, overlong_penalty,
                                ppo_clip_loss)
from superrl.trainer.batching import ROLLOUT, Row, RowSet
from superrl.trainer.mini_batches import rows_in_pg_loss, rows_with_gradient
from test_algorithms_dp import _shard, run_threads
from test_algorithms_hybrid import (FULL, GATES, P, SPLITS, _naive_agg, _valid, make_decision, random_batch,
                                    run_micro_batches)

F64 = torch.float64
CLIP_LOW, CLIP_HIGH = 0.2, 0.28


def f64(data, requires_grad=False) -> torch.Tensor:
    return torch.tensor(data, dtype=F64, requires_grad=requires_grad)


def _clip(x: float, low: float = CLIP_LOW, high: float = CLIP_HIGH) -> float:
    return min(max(x, 1 - low), 1 + high)


# ---------------------------------------------------------------- GSPO

def _uneven_batch(seed=0):
    """3 sequences of lengths 1, 4 and 2 (right-padded to 4), one advantage each."""
    gen = torch.Generator().manual_seed(seed)
    mask = f64([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    logprobs = torch.randn(3, 4, generator=gen, dtype=F64) * 0.2 - 1.0
    old = logprobs.detach() + torch.randn(3, 4, generator=gen, dtype=F64) * 0.15
    return logprobs, old, f64([0.7, -1.3, 0.4]), mask


def _naive_gspo_objective(logprobs, old, advantages, mask, length_weighted: bool):
    """The paper's sequence objective, token by token on scalars: s_i = exp(1/|y_i| sum_t (log pi -
    log pi_old)); loss_i = -min(s_i A_i, clip(s_i) A_i); mean over sequences (GSPO), or weighted by
    |y_i| (what token_mean aggregation makes of it)."""
    losses, weights = [], []
    for b in range(mask.shape[0]):
        tokens = [t for t in range(mask.shape[1]) if mask[b, t] == 1]
        log_s = sum(logprobs[b, t] - old[b, t] for t in tokens) / len(tokens)
        s, a = torch.exp(log_s), float(advantages[b])
        losses.append(-torch.minimum(s * a, torch.clamp(s, 1 - CLIP_LOW, 1 + CLIP_HIGH) * a))
        weights.append(len(tokens) if length_weighted else 1)
    return sum(w * loss for w, loss in zip(weights, losses)) / sum(weights)


@pytest.mark.parametrize("loss_agg", ["seq_mean_token_mean", "token_mean"])
def test_gspo_token_form_equals_the_sequence_objective_and_its_gradient(loss_agg):
    logprobs, old, advantages, mask = _uneven_batch()
    impl = logprobs.clone().requires_grad_()
    out = gspo_loss(impl, old, advantages, mask, CLIP_LOW, CLIP_HIGH)
    got = aggregate(out.loss, mask, loss_agg, global_token_counts(mask).denominator(loss_agg))
    got.backward()
    naive = logprobs.clone().requires_grad_()
    want = _naive_gspo_objective(naive, old, advantages, mask, length_weighted=loss_agg == "token_mean")
    want.backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-12)
    torch.testing.assert_close(impl.grad * mask, naive.grad, rtol=0, atol=1e-12)


def test_gspo_clips_whole_sequences_of_different_lengths_by_hand():
    # seq 0, 1 token: s = e^0.3 = 1.350 > 1.28, A > 0: clipped, no gradient.
    # seq 1, 3 tokens, log ratios 0.5, -0.4, 0.2: s = e^0.1 = 1.105 inside the range, although
    # token 0 alone (e^0.5 = 1.65) is one PPO would clip.
    old = torch.zeros(2, 3, dtype=F64)
    logprobs = f64([[0.3, 0.0, 0.0], [0.5, -0.4, 0.2]], requires_grad=True)
    mask = f64([[1, 0, 0], [1, 1, 1]])
    out = gspo_loss(logprobs, old, f64([1.0, 1.0]), mask, CLIP_LOW, CLIP_HIGH)
    assert out.clipped[0, 0] and not out.clipped[1].any()
    assert ppo_clip_loss(logprobs, old, f64([1.0, 1.0]), CLIP_LOW, CLIP_HIGH).clipped[1, 0]
    torch.testing.assert_close(out.ratio[1], torch.full((3,), math.exp(0.1), dtype=F64))
    assert out.loss[0, 0].item() == pytest.approx(-1.28)
    loss = aggregate(out.loss, mask, "seq_mean_token_mean", 2)
    assert loss.item() == pytest.approx((-1.28 - math.exp(0.1)) / 2)
    loss.backward()
    # d/dlogp_t of -A s / |y| / G: s_i / |y_i| per token, every token of the sequence alike
    torch.testing.assert_close(logprobs.grad, f64([[0.0, 0.0, 0.0], [-math.exp(0.1) / 6] * 3]))


# ---------------------------------------------------------------- CISPO

@pytest.mark.parametrize("ratio,adv,weight", [
    (1.5, 1.0, 1.28),    # above 1 + clip_high: the weight is clipped, the gradient stays
    (1.1, 1.0, 1.1),
    (0.5, -2.0, 0.8),    # below 1 - clip_low
    (0.9, -2.0, 0.9),
])
def test_cispo_gradient_is_the_clipped_weight_times_advantage_by_hand(ratio, adv, weight):
    old = f64([[-1.0]])
    logprobs = f64([[-1.0 + math.log(ratio)]], requires_grad=True)
    out = cispo_loss(logprobs, old, f64([adv]), CLIP_LOW, CLIP_HIGH)
    out.loss.sum().backward()
    assert out.loss.item() == pytest.approx(-weight * adv * logprobs.item())
    assert logprobs.grad.item() == pytest.approx(-weight * adv)  # d(-w A log pi)/d log pi, w detached
    assert out.clipped.item() == (weight != ratio)


def test_cispo_matches_a_naive_loop():
    logprobs, _, advantages, mask = _uneven_batch(seed=1)
    old = logprobs + torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=F64) * 0.4
    leaf = logprobs.clone().requires_grad_()
    out = cispo_loss(leaf, old, advantages, CLIP_LOW, CLIP_HIGH)
    aggregate(out.loss, mask, "token_mean", mask.sum()).backward()
    n = mask.sum().item()
    for b in range(3):
        for t in range(4):
            if mask[b, t] == 0:
                continue
            lp, a = logprobs[b, t].item(), advantages[b].item()
            w = _clip(math.exp(lp - old[b, t].item()))
            assert out.loss[b, t].item() == pytest.approx(-w * a * lp, abs=1e-12)
            assert leaf.grad[b, t].item() == pytest.approx(-w * a / n, abs=1e-12)
    assert out.clipped.any() and not out.clipped.all()  # the case exercises both sides


# ---------------------------------------------------------------- rollout correction weights

def test_tis_truncates_at_the_cap_by_hand():
    engine = torch.zeros(1, 4, dtype=F64)
    trainer = f64([[math.log(3.0), math.log(1.5), math.log(0.1), 7.0]])
    mask = f64([[1, 1, 1, 0]])
    w = correction_weights(trainer, engine, mask, "tis", cap=2.0)
    torch.testing.assert_close(w, f64([[2.0, 1.5, 0.1, 1.0]]))  # no lower truncation; padding 1


def test_mis_masks_outside_the_band_by_hand():
    log2 = math.log(2.0)
    engine = torch.zeros(1, 6, dtype=F64)
    trainer = f64([[log2, log2 + 1e-9, -log2, -log2 - 1e-9, 0.0, 50.0]])
    w = correction_weights(trainer, engine, f64([[1, 1, 1, 1, 1, 0]]), "mis", cap=2.0)
    torch.testing.assert_close(w, f64([[1.0, 0.0, 1.0, 0.0, 1.0, 1.0]]))  # [1/C, C] inclusive


def test_seq_tis_weighs_each_sequence_by_its_truncated_product_by_hand():
    engine = f64([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    trainer = engine + f64([[0.3, 0.4, 9.0], [0.1, -0.5, 0.0]])
    mask = f64([[1, 1, 0], [1, 1, 1]])
    w = correction_weights(trainer, engine, mask, "seq_tis", cap=2.0)
    # exp(0.7) = 2.01 > 2: truncated; exp(-0.4) = 0.67 for all three tokens of sequence 1
    torch.testing.assert_close(w, f64([[2.0, 2.0, 1.0], [math.exp(-0.4)] * 3]))


@pytest.mark.parametrize("mode", ["tis", "mis", "seq_tis"])
def test_correction_weights_match_a_naive_loop(mode):
    gen = torch.Generator().manual_seed(7)
    engine = torch.randn(5, 6, generator=gen, dtype=F64) - 2.0
    trainer = engine + torch.randn(5, 6, generator=gen, dtype=F64) * 0.5
    lengths = [6, 1, 3, 0, 5]
    mask = f64([[1.0 if t < n else 0.0 for t in range(6)] for n in lengths])
    cap = 1.5
    got = correction_weights(trainer.float(), engine.float(), mask, mode, cap)  # float32 log-probs in
    for b, n in enumerate(lengths):
        ratios = [math.exp(trainer[b, t].item()) / math.exp(engine[b, t].item()) for t in range(n)]
        product = math.prod(ratios)
        for t in range(6):
            if t >= n:
                want = 1.0
            elif mode == "tis":
                want = min(ratios[t], cap)
            elif mode == "mis":
                want = 1.0 if 1 / cap <= ratios[t] <= cap else 0.0
            else:
                want = min(product, cap)
            assert got[b, t].item() == pytest.approx(want, rel=1e-5), (b, t)
    assert got.dtype == F64


def test_correction_metrics_are_token_sums_and_a_max_over_ranks():
    weights = f64([1.0, 0.0, 2.0, 0.5, 0.0, 1.25, 0.75])
    want = {"rollout_correction/weight_mean": 5.5 / 7, "rollout_correction/weight_max": 2.0,
            "rollout_correction/masked_fraction": 2 / 7}
    assert correction_metrics(weights, None) == pytest.approx(want)
    # rank 1 holds no token at all: it must not change the mean nor the max
    shards = run_threads(lambda rank, group: correction_metrics(weights if rank == 0 else weights[:0], group))
    assert shards[0] == shards[1] == pytest.approx(want)
    uneven = run_threads(lambda rank, group: correction_metrics(weights[:2] if rank == 0 else weights[2:], group))
    assert uneven[0] == pytest.approx(want)
    assert correction_metrics(weights[:0], None) == {"rollout_correction/weight_mean": 1.0,
                                                     "rollout_correction/weight_max": 1.0,
                                                     "rollout_correction/masked_fraction": 0.0}


# ---------------------------------------------------------------- DAPO overlong penalty

@pytest.mark.parametrize("length,want", [
    (0, 0.0), (6, 0.0),          # L <= L_max - B = 6: no penalty
    (7, -1.5 / 4), (9, -1.5 * 3 / 4),
    (10, -1.5),                  # L = L_max: the full factor
    (11, -1.5),                  # beyond L_max (no engine returns it): DAPO's -1 times the factor
])
def test_overlong_penalty_at_the_edges_by_hand(length, want):
    got = overlong_penalty(torch.tensor([length]), max_tokens=10, buffer_len=4, penalty=1.5)
    assert got.item() == pytest.approx(want, abs=1e-15)


def test_overlong_penalty_matches_the_papers_piecewise_formula():
    lengths = list(range(0, 34))
    for max_tokens, buffer_len in [(32, 8), (32, 32), (32, 1)]:
        got = overlong_penalty(torch.tensor(lengths), max_tokens, buffer_len, penalty=0.7)
        for length, value in zip(lengths, got.tolist()):
            if length <= max_tokens - buffer_len:
                want = 0.0
            elif length <= max_tokens:
                want = ((max_tokens - buffer_len) - length) / buffer_len * 0.7
            else:
                want = -0.7
            assert value == pytest.approx(want, abs=1e-15), (max_tokens, buffer_len, length)


# ---------------------------------------------------------------- the hybrid loss with all of them

def _naive_token_loss(cfg, logp, old, adv, seq_log_ratio):
    if cfg.policy_loss == "ppo_clip":
        r = math.exp(logp - old)
        return max(-adv * r, -adv * _clip(r, cfg.clip_low, cfg.clip_high))
    if cfg.policy_loss == "gspo":
        s = math.exp(seq_log_ratio)
        return max(-adv * s, -adv * _clip(s, cfg.clip_low, cfg.clip_high))
    return -_clip(math.exp(logp - old), cfg.clip_low, cfg.clip_high) * adv * logp


def _naive_weight(cfg, trainer, engine, row_trainer, row_engine):
    ratio, cap = math.exp(trainer - engine), cfg.rollout_correction_cap
    if cfg.rollout_correction == "tis":
        return min(ratio, cap)
    if cfg.rollout_correction == "mis":
        return 1.0 if 1 / cap <= ratio <= cap else 0.0
    if cfg.rollout_correction == "seq_tis":
        return min(math.exp(sum(row_trainer) - sum(row_engine)), cap)
    return 1.0


def naive_pg(cfg, batch, gates, pg_rows):
    """loss/pg from the definitions: weighted token losses of the rows L_PG covers, aggregated by
    loss_agg over those rows only; per prompt and averaged over the P prompts under an active
    hard_gate (gate 0 for SFT-routed prompts)."""
    b = batch
    rows = []
    for lp, old, eng, adv in zip(_valid(b["logprobs"], b["mask"]), _valid(b["old_logprobs"], b["mask"]),
                                 _valid(b["engine_logprobs"], b["mask"]), b["advantages"].tolist()):
        seq = sum(x - y for x, y in zip(lp, old)) / max(len(lp), 1)
        rows.append([_naive_token_loss(cfg, x, y, adv, seq) * _naive_weight(cfg, y, e, old, eng)
                     for x, y, e in zip(lp, old, eng)])
    prompt_of = b["prompt_index"].tolist()
    kept = [(row, p) for row, p, keep in zip(rows, prompt_of, pg_rows) if keep]
    if cfg.hybrid.weighting == "hard_gate" and not all(gates):
        return sum(_naive_agg([r for r, p in kept if p == x], cfg.loss_agg) for x in range(P) if gates[x]) / P
    return _naive_agg([r for r, _ in kept], cfg.loss_agg)


def _batch_with_engine(seed=0):
    batch = random_batch(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    batch["engine_logprobs"] = batch["old_logprobs"] + torch.randn(batch["mask"].shape, generator=gen, dtype=F64) * 0.3
    batch["pg_rows"] = torch.tensor([i % 4 != 2 for i in range(batch["mask"].shape[0])])  # "truncated" rows out
    return batch


CASES = [("ppo_clip", "tis"), ("gspo", "seq_tis"), ("cispo", "mis"), ("gspo", "none"), ("cispo", "tis")]


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize("weighting", ["hard_gate", "fixed"])
@pytest.mark.parametrize("policy_loss,correction", CASES)
def test_hybrid_pg_term_matches_naive_and_micro_batches_add_up(policy_loss, correction, weighting, loss_agg):
    cfg = AlgorithmConfig(policy_loss=policy_loss, rollout_correction=correction, rollout_correction_cap=1.3,
                          loss_agg=loss_agg, clip_low=0.1, clip_high=0.15, kl_coef=0.05,
                          hybrid=HybridConfig(weighting=weighting, sft_coef=0.7))
    batch, decision = _batch_with_engine(), make_decision()
    full_loss, grad, _, metrics = run_micro_batches(cfg, batch, decision, *FULL)
    want = naive_pg(cfg, batch, GATES, batch["pg_rows"].tolist())
    assert metrics["loss/pg"].item() == pytest.approx(want, abs=1e-12)
    split_loss, split_grad, _, _ = run_micro_batches(cfg, batch, decision, *SPLITS)
    assert split_loss.item() == pytest.approx(full_loss.item(), abs=1e-12)
    torch.testing.assert_close(split_grad, grad, rtol=0, atol=1e-14)
    # rows out of L_PG still carry the KL term's gradient, and nothing else
    out = ~batch["pg_rows"]
    assert (grad[out] != 0).any()
    without_kl = run_micro_batches(dataclasses.replace(cfg, kl_coef=0.0), batch, decision, *FULL)[1]
    assert torch.all(without_kl[out] == 0)


def test_dp_shards_with_a_correction_sum_to_the_full_batch():
    cfg = AlgorithmConfig(policy_loss="gspo", rollout_correction="tis", rollout_correction_cap=1.2,
                          loss_agg="token_mean", hybrid=HybridConfig(weighting="hard_gate"))
    batch = _batch_with_engine(seed=2)
    full_loss, grad, _, metrics = run_micro_batches(cfg, batch, make_decision(), *FULL)

    def rank_fn(rank, group):
        shard = _shard(batch, rank)
        decision = make_decision(GATES[2 * rank:2 * rank + 2], num_prompts=P)
        n, ne = shard["mask"].shape[0], shard["expert_mask"].shape[0]
        return run_micro_batches(cfg, shard, decision, [slice(0, 2), slice(2, n)], [slice(0, 1), slice(1, ne)],
                                 group=group)

    (loss0, grad0, _, m0), (loss1, grad1, _, m1) = run_threads(rank_fn)
    assert (loss0 + loss1).item() == pytest.approx(full_loss.item(), abs=1e-12)
    rows0 = torch.isin(batch["prompt_index"], torch.tensor([0, 1]))
    torch.testing.assert_close(torch.cat([grad0, grad1]), torch.cat([grad[rows0], grad[~rows0]]), rtol=0, atol=1e-14)
    assert (m0["loss/pg"] + m1["loss/pg"]).item() == pytest.approx(metrics["loss/pg"].item(), abs=1e-12)


def test_missing_engine_logprobs_are_named():
    cfg = AlgorithmConfig(rollout_correction="tis")
    batch = random_batch()
    with pytest.raises(ValueError, match="rollout_correction='tis' needs rollout.engine_logprobs"):
        run_micro_batches(cfg, batch, make_decision(), *FULL)


# ---------------------------------------------------------------- rows the trainer forwards

@pytest.mark.parametrize("overrides,forwarded", [
    ({}, [True, True, False, True]),                                       # only the zero advantage out
    ({"mask_truncated": True}, [False, True, False, False]),              # and the truncated ones
    ({"mask_truncated": True, "kl_coef": 0.1}, [True] * 4),               # the KL loss term reads every row
    ({"mask_truncated": True, "kl_coef": 0.1, "kl_in_reward": True}, [False, True, False, False]),
])
def test_truncated_rows_are_out_of_the_pg_loss_and_not_forwarded(overrides, forwarded):
    cfg = AlgorithmConfig(**overrides)
    finish_reasons = [["length", "stop"], ["stop", "length"]]
    rollout = RowSet([Row(ROLLOUT, i, [1, 2], [3]) for i in range(4)], torch.tensor([0, 0, 1, 1]))
    pg_rows = rows_in_pg_loss(cfg, finish_reasons)
    assert pg_rows.tolist() == ([False, True, True, False] if cfg.mask_truncated else [True] * 4)
    got = rows_with_gradient(cfg, make_decision([True, True], num_prompts=2), rollout,
                             f64([0.5, -0.5, 0.0, 1.0]), pg_rows)
    assert got.tolist() == forwarded
