"""Bad input never crashes or hangs a run, and every refusal names its cause (docs/fault_tolerance.md,
"Bad input"): malformed dataset rows, reward functions that raise / hang / return NaN or non-numbers,
prompts past the length limits, empty generations and reward groups with no signal. Each case runs
the real trainer (`python -m superrl.train` on a tiny model) and its pieces at unit level."""
import json
import math

import pytest
import safetensors.torch
import torch

import make_tiny_model
from test_algorithms_dp import run_threads
from trainer_runs import start_training, train, write_config
from superrl.algorithms import grpo_advantages, reinforce_pp_advantages, rloo_advantages
from superrl.config import ConfigError, load_config, validate_context_length
from superrl.hf_config import load_arch
from superrl.rollout import EmbeddedEngine, SamplingParams
from superrl.trainer.batching import ROLLOUT, Row, pack_micro_batches, target_mask
from superrl.trainer.metrics import read_metrics
from superrl.trainer.step import IGNORE

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("no_leftover_processes")]
MISBEHAVING = "reward_fixtures:misbehaving_by_truth"
TIMEOUT_S = 1.0


def write_rows(path, lines: list) -> None:
    """One line per entry: dicts as JSON, strings verbatim (for lines that are not valid JSON)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def generic(prompt, truth: str) -> dict:
    return {"prompt": prompt, "ground_truth": truth, "data_source": "custom"}


# Rows of the bad-input run. The ground truth tells reward_fixtures:misbehaving_by_truth what to do,
# so the run's reward failures are known whatever its random model writes.
BEHAVIOURS = ["ok", "raise", "hang", "nan", "inf", "str"]
GOOD = [generic(f"Say something about {kind}.", kind) for kind in BEHAVIOURS]  # lines 1-6
MALFORMED = [  # lines 7-10: (line, the message after "<file> line N: ")
    ('{"prompt": "unfinished", ', "invalid JSON (Expecting property name enclosed in double quotes at column 25)"),
    ({"prompt": "no answer", "data_source": "custom"}, "missing column 'ground_truth'"),
    (generic(12, "ok"), "column 'prompt' must be a string, got int"),
    (generic("   ", "ok"), "column 'prompt' is empty"),
]
TOO_LONG = [generic("count " * 100, "ok"), generic("words " * 80, "ok")]  # lines 11-12, > 48 tokens
RESPONSES_PER_STEP = len(GOOD) * 2  # every prompt, n=2
BAD_INPUT_OVERRIDES = ("data.max_prompt_len=48", f"reward.function={MISBEHAVING}", f"reward.timeout_s={TIMEOUT_S}",
                       f"trainer.prompts_per_step={len(GOOD)}", "rollout.n=2", "rollout.max_tokens=8")


@pytest.fixture(scope="module")
def bad_rows_dir(tmp_path_factory):
    """train.jsonl: good rows, then malformed rows, then prompts too long; eval.jsonl: good rows."""
    d = tmp_path_factory.mktemp("bad_rows")
    write_rows(d / "train.jsonl", [*GOOD, *(line for line, _ in MALFORMED), *TOO_LONG])
    write_rows(d / "eval.jsonl", GOOD)
    return d


@pytest.fixture(scope="module")
def bad_input_run(tmp_path_factory, tiny_llama, bad_rows_dir):
    """Two steps on the bad rows with data.skip_bad_rows=true: (metrics rows, trainer output)."""
    d = tmp_path_factory.mktemp("bad_input_run")
    config = write_config(d / "c.yaml", tiny_llama, bad_rows_dir, d / "run", steps=2)
    output = train(config, 1, *BAD_INPUT_OVERRIDES, "data.skip_bad_rows=true")
    return read_metrics(str(d / "run")), output


# ---- malformed dataset rows ---------------------------------------------------------------------
def test_skipped_rows_are_counted_and_named(bad_input_run, bad_rows_dir):
    rows, output = bad_input_run
    assert [row["step"] for row in rows] == [1, 2]
    assert [row["data/skipped_rows"] for row in rows] == [len(MALFORMED)] * 2
    assert f"superrl: skipped {len(MALFORMED)} malformed dataset rows (data.skip_bad_rows=true)" in output
    for number, (_, message) in enumerate(MALFORMED, len(GOOD) + 1):
        assert f"{bad_rows_dir / 'train.jsonl'} line {number}: {message}" in output


def test_malformed_row_without_skip_stops_the_run_naming_file_and_line(tmp_path, tiny_llama, bad_rows_dir):
    config = write_config(tmp_path / "c.yaml", tiny_llama, bad_rows_dir, tmp_path / "run", steps=2)
    proc = start_training(tmp_path, config, *BAD_INPUT_OVERRIDES)
    assert proc.wait(timeout=300) != 0
    log = (tmp_path / "run.log").read_text()
    first_line, first_message = len(GOOD) + 1, MALFORMED[0][1]
    assert f"DataError: {bad_rows_dir / 'train.jsonl'} line {first_line}: {first_message}" in log, log[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- reward functions that raise, hang or return NaN / Inf / non-numbers --------------------------
def test_reward_failures_score_zero_are_counted_and_the_run_finishes(bad_input_run):
    rows, _ = bad_input_run
    per_group = RESPONSES_PER_STEP // len(BEHAVIOURS)
    for row in rows:
        assert row["reward/timeouts"] == per_group  # "hang"
        assert row["reward/errors"] == 4 * per_group  # "raise", "nan", "inf", "str"
        assert row["reward/mean"] == per_group * 1.0 / RESPONSES_PER_STEP  # only "ok" scores (1.0)
        assert row["train/step_skipped"] == 0
        for key in ("reward/mean", "reward/success_rate", "loss/pg", "loss/sft", "actor/entropy"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), key  # NaN would log as null


def test_reward_failures_are_logged_with_function_and_cause(bad_input_run):
    _, output = bad_input_run
    for cause in ("raised RuntimeError: reward bug", f"did not return within reward.timeout_s={TIMEOUT_S}s",
                  "returned non-finite score nan", "returned non-finite score -inf",
                  "returned str '1.0', expected a number"):
        assert f"superrl: reward scored 0 (counted in reward/errors or reward/timeouts): {MISBEHAVING} {cause}" \
            in output, cause


# ---- prompts past the length limits -------------------------------------------------------------
def test_prompts_longer_than_max_prompt_len_are_dropped_and_counted(bad_input_run):
    rows, _ = bad_input_run
    assert [row["data/prompts_dropped"] for row in rows] == [len(TOO_LONG)] * 2
    assert [row["data/prompts_truncated"] for row in rows] == [0, 0]


def test_prompt_plus_response_past_the_context_is_refused_at_start_up(tmp_path, tiny_llama, arith_files):
    context = load_arch(tiny_llama).max_position_embeddings  # 2048
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run")
    proc = start_training(tmp_path, config, f"data.max_prompt_len={context - 100}", "rollout.max_tokens=101")
    assert proc.wait(timeout=300) != 0
    log = (tmp_path / "run.log").read_text()
    assert (f"ConfigError: data.max_prompt_len + rollout.max_tokens = {context - 100} + 101 = {context + 1} "
            f"exceeds the model's max_position_embeddings={context}; lower one of them") in log, log[-3000:]


@pytest.mark.parametrize("overrides, fits", [
    (["data.max_prompt_len=1984", "rollout.max_tokens=64"], True),  # exactly the context
    (["data.max_prompt_len=1985", "rollout.max_tokens=64"], False),
    (["data.max_prompt_len=64", "rollout.max_tokens=0"], False),
    (["data.max_prompt_len=0", "rollout.max_tokens=64"], False),
])
def test_context_length_check(tiny_llama, overrides, fits):
    config, arch = load_config(None, [f"model.hf_dir={tiny_llama}", *overrides]), load_arch(tiny_llama)
    if fits:
        validate_context_length(config, arch)
    else:
        with pytest.raises(ConfigError, match="data.max_prompt_len"):
            validate_context_length(config, arch)


# ---- empty generations and groups without reward signal -----------------------------------------
@pytest.fixture(scope="module")
def eos_first_model(tmp_path_factory) -> str:
    """A tiny Llama that answers every prompt with EOS at once. Every embedding gets a large
    dimension 0, so the final RMSNorm output is about +8 along it for any input; EOS's (tied)
    embedding is 10x larger there, so EOS outscores every other token by hundreds of logits."""
    out = tmp_path_factory.mktemp("eos_first") / "model"
    make_tiny_model.main(["--arch", "llama", "--out-dir", str(out)])
    eos = json.loads((out / "config.json").read_text())["eos_token_id"]
    weights = safetensors.torch.load_file(out / "model.safetensors")
    embed = weights["model.embed_tokens.weight"]
    embed[:, 0] = 4.0
    embed[eos, 0] = 40.0
    safetensors.torch.save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return str(out)


def test_eos_first_model_generates_only_eos(eos_first_model):
    engine = EmbeddedEngine(eos_first_model)
    eos = engine.config.eos_token_ids[0]
    groups = engine.generate([[1, 40, 41, 42], [1, 7]], SamplingParams(n=3, max_tokens=8, seed=0))
    assert [[(c.token_ids, c.finish_reason) for c in group] for group in groups] == [[([eos], "stop")] * 3] * 2


def test_empty_generations_train_without_crash_and_zero_advantages(tmp_path, eos_first_model, arith_files):
    """Every response is the EOS alone (decoded: ""), so every reward is 0: advantages are exactly
    0, the PG loss is exactly 0, and the run completes with finite metrics."""
    config = write_config(tmp_path / "c.yaml", eos_first_model, arith_files, tmp_path / "run", steps=2)
    train(config, 1, "algorithm.switch.mode=off", "rollout.n=2")
    rows = read_metrics(str(tmp_path / "run"))
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert row["response/mean_length"] == 1.0 and row["response/truncated_fraction"] == 0.0
        assert row["reward/mean"] == 0.0 and row["loss/pg"] == 0.0
        assert row["train/step_skipped"] == 0
        assert all(value is not None for value in row.values()), row  # no NaN / Inf anywhere


def test_response_without_tokens_is_a_row_without_targets():
    rows = [Row(ROLLOUT, 0, [5, 6, 7], [8, 2]), Row(ROLLOUT, 1, [5, 6, 7], []), Row(ROLLOUT, 2, [5], [])]
    [mb] = pack_micro_batches(rows, micro_batch_size=3, pad_id=0, uniform_width=False)
    assert mb.tokens.shape == (3, 4)
    assert (mb.targets != IGNORE).sum(dim=1).tolist() == [0, 0, 2]  # sorted by width: [5], [5,6,7], [5,6,7,8,2]
    assert target_mask(rows).sum(dim=1).tolist() == [2.0, 0.0, 0.0]
    [single] = pack_micro_batches(rows[2:], micro_batch_size=1, pad_id=0, uniform_width=False)
    assert single.tokens.shape == (1, 1) and single.targets.tolist() == [[IGNORE]]  # never zero width


NO_SIGNAL = torch.tensor([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7], [1.0, 0.0, 0.2]], dtype=torch.float64)


@pytest.mark.parametrize("estimator", [grpo_advantages, lambda r: grpo_advantages(r, norm_by_std=False),
                                       rloo_advantages], ids=["grpo", "dr_grpo", "rloo"])
def test_group_with_identical_rewards_has_exactly_zero_advantages(estimator):
    advantages = estimator(NO_SIGNAL)
    assert advantages[:2].eq(0).all()  # plain arithmetic gives ~1e-11 here (0.1 * 3 / 3 != 0.1)
    assert advantages[2].ne(0).all() and torch.isfinite(advantages).all()


def test_reinforce_pp_batch_with_identical_rewards_has_exactly_zero_advantages():
    same = torch.full((4, 3), 0.1, dtype=torch.float64)
    assert reinforce_pp_advantages(same).eq(0).all()
    assert reinforce_pp_advantages(NO_SIGNAL)[:2].ne(0).all()  # batch baseline: equal groups still learn
    shards = run_threads(lambda rank, group: reinforce_pp_advantages(same[2 * rank:2 * rank + 2], group=group))
    assert all(shard.eq(0).all() for shard in shards)
    mixed = torch.cat([same[:2], NO_SIGNAL[2:].repeat(2, 1)])  # equal on rank 0 only: not a uniform batch
    shards = run_threads(lambda rank, group: reinforce_pp_advantages(mixed[2 * rank:2 * rank + 2], group=group))
    torch.testing.assert_close(torch.cat(shards), reinforce_pp_advantages(mixed), rtol=0, atol=1e-14)
    assert shards[0].ne(0).all()
