"""The rollout/trainer parity guard: its statistic against a float64 naive reference, clean TP2 and
PP2 trainer runs far below the tolerance, and a sync corrupted on one rank's engine (one tensor x 1.01)
that stops every rank within one step, before that step's optimizer step."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from trainer_runs import start_training, train, write_config
from superrl.trainer import batching
from superrl.trainer.metrics import read_metrics
from superrl.trainer.parity import (BFLOAT16_TOLERANCE, FLOAT32_TOLERANCE, ParityError, ParityStats, check_parity,
                                    engine_rows, parity_tolerance, reduce_parity, token_log_ratios)

PROMPT_LENS, RESPONSE_LENS = [3, 5, 2], [[4, 1], [7, 2], [3, 6]]  # [P], [P][K]


def _examples(generator) -> list:
    return [SimpleNamespace(prompt_ids=torch.randint(1, 50, (n,), generator=generator).tolist(),
                            expert_ids=torch.randint(1, 50, (5,), generator=generator).tolist())
            for n in PROMPT_LENS]


def _step_batches(generator):
    """A step's real micro-batches (rollout rows, one expert row, padding), the trainer's float32 old
    log-probs attached, and the engine's [P][K] log-probs close to them."""
    examples = _examples(generator)
    responses = [[torch.randint(1, 50, (n,), generator=generator).tolist() for n in group] for group in RESPONSE_LENS]
    rollout = batching.rollout_rows(examples, responses)
    experts = batching.expert_rows(examples, [1])
    micro_batches = batching.pack_micro_batches(rollout.rows + experts.rows, 3, pad_id=0, uniform_width=False)
    for mb in micro_batches:
        mb.old_logprobs = -5.0 * torch.rand(mb.tokens.shape, generator=generator)
        mb.old_logprobs[mb.row_kind == batching.EXPERT] = -1e6  # no engine log-probs: must not count
    engine = [[(-5.0 * torch.rand(n, generator=generator)).tolist() for n in group] for group in RESPONSE_LENS]
    return micro_batches, rollout, engine


def _naive_log_ratios(micro_batches, rollout, engine) -> list:
    """float64, token by token: row i's response token j is predicted at position len(prompt)-1+j."""
    where = {}
    for mb in micro_batches:
        for b in range(len(mb.row_kind)):
            if int(mb.row_kind[b]) == batching.ROLLOUT:
                where[int(mb.row_index[b])] = mb.old_logprobs[b]
    flat_engine = [response for group in engine for response in group]
    ratios = []
    for i, row in enumerate(rollout.rows):
        for j in range(len(row.response_ids)):
            ratios.append(float(where[i][len(row.prompt_ids) - 1 + j]) - float(flat_engine[i][j]))
    return ratios


def test_statistic_equals_float64_naive_reference():
    micro_batches, rollout, engine = _step_batches(torch.Generator().manual_seed(0))
    naive = _naive_log_ratios(micro_batches, rollout, engine)
    assert len(naive) == sum(map(sum, RESPONSE_LENS))
    stats = reduce_parity(token_log_ratios(micro_batches, engine_rows(engine)), group=None)
    assert stats.tokens == len(naive)
    assert stats.diff_mean == pytest.approx(sum(abs(r) for r in naive) / len(naive), rel=1e-12)
    assert stats.diff_max == pytest.approx(max(abs(r) for r in naive), rel=1e-12)
    assert stats.prob_ratio_max == pytest.approx(max(math.exp(r) for r in naive), rel=1e-12)


def test_engine_logprob_count_must_match_the_response():
    micro_batches, _, engine = _step_batches(torch.Generator().manual_seed(1))
    engine[2][0] = engine[2][0][:-1]
    with pytest.raises(ValueError, match="rollout row 4: the engine returned 2 log-probs for 3 response tokens"):
        token_log_ratios(micro_batches, engine_rows(engine))


def test_no_tokens_is_parity():
    assert reduce_parity(torch.zeros(0, dtype=torch.float64), group=None) == ParityStats(0.0, 0.0, 1.0, 0.0)


def _config(model_dtype="float32", engine_dtype=None, tolerance=None):
    return SimpleNamespace(model=SimpleNamespace(dtype=model_dtype),
                           rollout=SimpleNamespace(dtype=engine_dtype, parity_tolerance=tolerance))


def test_default_tolerance_follows_the_lower_precision_side():
    assert parity_tolerance(_config()) == FLOAT32_TOLERANCE == 1e-4
    assert parity_tolerance(_config("bfloat16")) == BFLOAT16_TOLERANCE
    assert parity_tolerance(_config("float32", "bfloat16")) == BFLOAT16_TOLERANCE
    assert parity_tolerance(_config("bfloat16", "float32")) == BFLOAT16_TOLERANCE
    assert parity_tolerance(_config("bfloat16", tolerance=0.2)) == 0.2


def test_check_parity_stops_above_the_tolerance_only():
    check_parity(ParityStats(1e-4, 5e-3, 1.005, 10), tolerance=1e-4, step=3)
    with pytest.raises(ParityError, match=r"step 3: the rollout engine and the trainer disagree .* mean "
                                          r"\|engine - trainer\| = 2\.000e-04, max = 5\.000e-03 over 10 tokens, "
                                          r"above rollout\.parity_tolerance=1\.000e-04"):
        check_parity(ParityStats(2e-4, 5e-3, 1.005, 10), tolerance=1e-4, step=3)
    with pytest.raises(ParityError):  # NaN log-probs are no parity
        check_parity(ParityStats(math.nan, math.nan, math.nan, 10), tolerance=1e-4, step=1)


# ---- real trainer runs ------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2"], ids=["tp2", "pp2"])
def test_clean_run_is_far_below_the_fp32_tolerance(tmp_path, tiny_llama, arith_files, layout):
    """Metrics are logged by rank 0: at PP2 a stage without log-probs, which gets them reduced."""
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run", steps=2)
    train(config, 2, layout)
    rows = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert 0 < row["rollout/logprob_diff_mean"] < FLOAT32_TOLERANCE / 10, row
        assert row["rollout/logprob_diff_mean"] <= row["rollout/logprob_diff_max"] < FLOAT32_TOLERANCE, row
        assert abs(row["rollout/prob_ratio_max"] - 1.0) < FLOAT32_TOLERANCE, row


def test_corrupted_sync_on_one_engine_stops_every_rank_within_one_step(tmp_path, tiny_llama, arith_files,
                                                                       monkeypatch, no_leftover_processes):
    """DP2, two embedded engines; only rank 0's is corrupted, only rank 0's tokens disagree, and rank 1
    must stop too. A 1.01 scale of one value projection: caught at the fp32 default (1e-4), though
    well below the old 1e-3."""
    monkeypatch.setenv("SUPERRL_TEST_CORRUPT_TENSOR", "model.layers.0.self_attn.v_proj.weight")
    monkeypatch.setenv("SUPERRL_TEST_CORRUPT_SCALE", "1.01")
    monkeypatch.setenv("SUPERRL_TEST_CORRUPT_RANK", "0")
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run", steps=3)
    proc = start_training(tmp_path, config, nproc=2, script="train_corrupt_sync.py")
    assert proc.wait(timeout=300) != 0
    log = (tmp_path / "run.log").read_text()
    assert [r["step"] for r in read_metrics(str(tmp_path / "run"))] == [1], log[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        error = result["error"] or ""
        assert error.startswith("step 2: the rollout engine and the trainer disagree"), (rank, result, log[-3000:])
        assert "above rollout.parity_tolerance=1.000e-04" in error and "a bad weight sync" in error
        mean = float(error.split("mean |engine - trainer| = ")[1].split(",")[0])
        assert FLOAT32_TOLERANCE < mean < 1e-3, error
        assert result["optimizer_steps"] == 1 and result["completed_steps"] == 1, result  # step 2 never updated
