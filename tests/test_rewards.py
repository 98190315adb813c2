"""Reward functions (tables of formatting traps), source dispatch, and isolation of bad rewards
(the misbehaving functions live in ``reward_fixtures``, which reward workers import)."""
import logging
import threading

import pytest

from superrl.rewards import gsm8k, hotpotqa
from superrl.rewards.boxed import last_boxed_content
from superrl.rewards.registry import RewardFunctionError, load_reward_function, reward_spec_for
from superrl.rewards.scorer import RewardScorer

GSM8K_FULL_ANSWER = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"

GSM8K_CASES = [  # (solution, ground truth, method, expected)
    ("#### 18", "18", "strict", 1.0),
    ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18", "18", "strict", 1.0),
    ("#### 1,000", "1000", "strict", 1.0),
    ("#### 1000", "1,000", "strict", 1.0),
    ("#### 1,234,567", "1234567", "strict", 1.0),
    ("#### $18", "18", "strict", 1.0),
    ("#### $ 18", "18", "strict", 1.0),
    ("#### 5", "$5", "strict", 1.0),
    ("#### 18.00", "18", "strict", 1.0),
    ("#### 18.0", "18", "strict", 1.0),
    ("#### 18.", "18", "strict", 1.0),
    ("####    18   ", " 18 ", "strict", 1.0),
    ("#### 018", "18", "strict", 1.0),
    ("#### -0", "0", "strict", 1.0),
    ("#### -3", "-3", "strict", 1.0),
    ("#### 3", "-3", "strict", 0.0),
    ("#### 0.5", ".5", "strict", 1.0),
    ("#### 3.14", "3.140", "strict", 1.0),
    ("#### 17", "18", "strict", 0.0),
    ("The answer is 18", "18", "strict", 0.0),
    ("#### 5 oops #### 18", "18", "strict", 1.0),
    ("#### 18\n#### 5", "18", "strict", 0.0),
    ("#### 18 dollars", "18", "strict", 1.0),
    ("#### eighteen", "18", "strict", 0.0),
    ("####", "18", "strict", 0.0),
    ("", "18", "strict", 0.0),
    ("#### 12,34", "1234", "strict", 0.0),  # not a thousands grouping: reads 12
    ("#### 72", GSM8K_FULL_ANSWER, "strict", 1.0),
    ("#### 24", GSM8K_FULL_ANSWER, "strict", 0.0),
    ("The answer is 18.", "18", "flexible", 1.0),
    ("First 5, then 18 apples", "18", "flexible", 1.0),
    ("18 apples, minus 5", "18", "flexible", 0.0),
    ("It costs $1,000.", "1000", "flexible", 1.0),
    ("It is -7 degrees", "-7", "flexible", 1.0),
    ("no digits here", "18", "flexible", 0.0),
    ("#### 72", GSM8K_FULL_ANSWER, "flexible", 1.0),
]


@pytest.mark.parametrize("solution, truth, method, expected", GSM8K_CASES)
def test_gsm8k(solution, truth, method, expected):
    assert gsm8k.compute_score(solution, truth, method=method) == expected


def test_gsm8k_rejects_unknown_method():
    with pytest.raises(ValueError, match="strict"):
        gsm8k.compute_score("#### 1", "1", method="loose")


MATH_CASES = [  # (solution, ground truth, expected)
    ("\\boxed{5}", "5", 1.0),
    ("The answer is $\\boxed{5}$.", "5", 1.0),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{0.5}", "\\frac12", 1.0),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("\\boxed 5", "5", 1.0),
    ("so $\\boxed 5$ done", "5", 1.0),
    ("\\fbox{5}", "5", 1.0),
    ("\\boxed{3} no wait \\boxed{5}", "5", 1.0),
    ("\\boxed{5} no wait \\boxed{3}", "5", 0.0),
    ("5", "5", 0.0),
    ("\\boxed{", "5", 0.0),
    ("\\boxed{5", "5", 0.0),
    ("\\boxed{}", "5", 0.0),
    ("\\boxedfoo{5}", "5", 0.0),
    ("\\boxed{\\sqrt{2}}", "\\sqrt2", 1.0),
    ("\\boxed{5\\sqrt{2}}", "5\\sqrt{2}", 1.0),
    ("\\boxed{x^2+1}", "1+x^2", 1.0),
    ("\\boxed{5\\text{ cm}}", "5", 1.0),
    ("\\boxed{\\$5}", "5", 1.0),
    ("\\boxed{-0}", "0", 1.0),
    ("\\boxed{1,000}", "1000", 1.0),
    ("\\boxed{2, 3}", "2, 3", 1.0),
    ("\\boxed{x=2}", "2", 1.0),
    ("\\boxed{\\text{(A)}}", "A", 1.0),
    ("\\boxed{\\pi}", "3.14159", 0.0),
    ("\\boxed{3.0000001}", "3", 0.0),
    ("\\boxed{6}", "5", 0.0),
    ("\\boxed{\\infty}", "\\infty", 1.0),
    ("\\boxed{\\frac{5}{6}}", "So it is $\\boxed{\\frac{5}{6}}$.", 1.0),
    ("\\boxed{\\begin{pmatrix} 3 \\\\ 7 \\end{pmatrix}}", "\\begin{pmatrix} 3 \\\\ 7 \\end{pmatrix}", 1.0),
]


@pytest.fixture(scope="module")
def math_reward():
    from superrl.rewards import math

    return math


@pytest.mark.parametrize("solution, truth, expected", MATH_CASES)
def test_math(math_reward, solution, truth, expected):
    assert math_reward.compute_score(solution, truth) == expected


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), ("a \\boxed{a} b \\fbox{{x}}", "{x}"), ("\\boxed 12$", "12"),
    ("\\boxed{\\{1\\}}", "\\{1\\}"), ("\\boxed{a}{b}", "a"), ("none", None), ("\\boxed{a", None),
])
def test_last_boxed_content(text, expected):
    assert last_boxed_content(text) == expected


def test_math_in_worker_thread_uses_no_signals(math_reward):
    """math-verify's signal.alarm only works in the main thread; other threads must still score."""
    results = []
    thread = threading.Thread(target=lambda: results.append(
        math_reward.compute_score("\\boxed{0.5}", "\\frac{1}{2}")))
    thread.start()
    thread.join()
    assert results == [1.0]


HOTPOTQA_CASES = [  # (solution, ground truth, em, f1)
    ("Answer: France", "France", 1.0, 1.0),
    ("answer: france", "France", 1.0, 1.0),
    ("ANSWER: FRANCE", "france", 1.0, 1.0),
    ("Final answer: France", "France", 1.0, 1.0),
    ("Answer:\nFrance", "France", 1.0, 1.0),
    ("He was born in Roanne.\nAnswer: France\nThat is all.", "France", 1.0, 1.0),
    ("Answer: Paris. Actually, Answer: France", "France", 1.0, 1.0),
    ("France", "France", 1.0, 1.0),
    ("I think it is France", "France", 0.0, 2 * 0.2 / 1.2),
    ("Answer: the Danube", "Danube", 1.0, 1.0),
    ("Answer: Danube.", "the Danube", 1.0, 1.0),
    ("Answer:   An Apple  ", "apple", 1.0, 1.0),
    ("Answer: 1,441.", "1441", 1.0, 1.0),
    ("Answer: Giacomo Puccini", "Puccini", 0.0, 2 * 0.5 / 1.5),
    ("Answer: Mount Kilimanjaro", "Kilimanjaro", 0.0, 2 * 0.5 / 1.5),
    ("Answer: Hampshire, England", "Hampshire", 0.0, 2 * 0.5 / 1.5),
    ("Answer: Pacific", "Pacific Ocean", 0.0, 2 * 0.5 / 1.5),
    ("Answer: Ocean Pacific", "Pacific Ocean", 0.0, 1.0),
    ("Answer: Jean-Pierre Jeunet", "Jean Pierre Jeunet", 0.0, 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)),
    ("Answer: yes", "yes", 1.0, 1.0),
    ("Answer: Yes.", "yes", 1.0, 1.0),
    ("Answer: no", "yes", 0.0, 0.0),
    ("Answer: yes", "no", 0.0, 0.0),
    ("Answer: yes it is", "yes", 0.0, 0.0),
    ("Answer:", "France", 0.0, 0.0),
    ("", "France", 0.0, 0.0),
    ("Answer: Germany", "France", 0.0, 0.0),
    ("Answer: NYC", ["New York City", "NYC"], 1.0, 1.0),
    ("Answer: New York", ["New York City", "NYC"], 0.0, 2 * (2 / 3) / (1 + 2 / 3)),
    ("Answer: France", ["Germany", "France"], 1.0, 1.0),
    ("Answer: the the Beatles", "Beatles", 1.0, 1.0),
]


@pytest.mark.parametrize("solution, truth, em, f1", HOTPOTQA_CASES)
def test_hotpotqa(solution, truth, em, f1):
    result = hotpotqa.compute_score(solution, truth)
    assert result == {"score": em, "em": em, "f1": pytest.approx(f1)}


def test_hotpotqa_rejects_empty_truth_list():
    with pytest.raises(ValueError, match="empty"):
        hotpotqa.compute_score("Answer: x", [])


@pytest.mark.parametrize("source, module", [
    ("gsm8k", "gsm8k"), ("openai/gsm8k", "gsm8k"), ("arith_l3", "gsm8k"), ("gsm_symbolic", "gsm8k"),
    ("MATH", "math"), ("lighteval/math-hard", "math"), ("hotpot_qa", "hotpotqa"), ("hotpotqa.distractor", "hotpotqa"),
])
def test_default_reward_per_source(source, module):
    assert load_reward_function(reward_spec_for(source)).__module__ == f"superrl.rewards.{module}"


def test_override_applies_to_every_source():
    assert reward_spec_for("gsm8k", "my.module:fn") == "my.module:fn"


@pytest.mark.parametrize("source, override, message", [
    ("trivia", None, "no default reward function for data_source 'trivia'"),
    ("gsm8k", "no_colon", "must look like 'module:function'"),
    ("gsm8k", "superrl.no_such_module:fn", "cannot import module 'superrl.no_such_module'"),
    ("gsm8k", "superrl.rewards.gsm8k:no_such_fn", "has no callable 'no_such_fn'"),
])
def test_bad_reward_config_fails_at_load_time(source, override, message):
    with pytest.raises(RewardFunctionError, match=message):
        RewardScorer([source], override)


MISBEHAVING = "reward_fixtures:misbehaving_reward"


@pytest.fixture(scope="module")
def misbehaving_scorer():
    with RewardScorer(["custom"], MISBEHAVING, timeout_s=0.5, num_workers=2, chunk_size=4) as scorer:
        yield scorer


def test_isolation_turns_failures_into_zero_and_counts_them(misbehaving_scorer):
    kinds = ["ok", "raise", "hang", "nan", "str", "ok", "exit", "dict", "inf", "none", "tensor", "nodict", "ok"]
    batch = misbehaving_scorer.score(kinds, ["x"] * len(kinds), ["custom"] * len(kinds))
    assert batch.scores == [1.0, 0, 0, 0, 0, 1.0, 0, 0.5, 0, 0, 0, 0, 1.0]
    assert batch.details[7] == {"f1": 0.25}
    assert batch.timeouts == 1
    assert batch.errors == 8  # raise, nan, str, exit, inf, none, tensor, nodict
    assert batch.metrics() == {"reward/errors": 8.0, "reward/timeouts": 1.0}
    assert any("RuntimeError: reward bug" in message for message in batch.messages)


def test_failures_name_the_function_and_cause_and_are_logged_once(caplog):
    kinds = ["raise", "hang", "exit", "nan", "str", "ok"]
    with RewardScorer(["custom"], MISBEHAVING, timeout_s=0.5, num_workers=1) as scorer, \
            caplog.at_level(logging.WARNING, logger="superrl.rewards.scorer"):
        batches = [scorer.score(kinds, ["x"] * len(kinds), ["custom"] * len(kinds)) for _ in range(2)]
    expected = [f"{MISBEHAVING} raised RuntimeError: reward bug",
                f"{MISBEHAVING} did not return within reward.timeout_s=0.5s",
                f"{MISBEHAVING} killed its worker process (exit code 3)",
                f"{MISBEHAVING} returned non-finite score nan",
                f"{MISBEHAVING} returned str '1.0', expected a number"]
    assert [batch.messages for batch in batches] == [expected, expected]
    assert [(batch.errors, batch.timeouts) for batch in batches] == [(4, 1), (4, 1)]
    # the second batch repeats the same failures: each cause is logged once per run, not per batch
    assert [record.getMessage() for record in caplog.records] == [
        f"superrl: reward scored 0 (counted in reward/errors or reward/timeouts): {message}" for message in expected]


def test_pool_recovers_after_hangs_and_crashes(misbehaving_scorer):
    for kinds in (["hang", "hang", "ok"], ["exit", "ok", "ok"]):
        misbehaving_scorer.score(kinds, ["x"] * 3, ["custom"] * 3)
    batch = misbehaving_scorer.score(["ok"] * 50, ["x"] * 50, ["custom"] * 50)
    assert batch.scores == [1.0] * 50 and batch.errors == batch.timeouts == 0


def test_scorer_dispatches_by_data_source():
    sources = ["gsm8k", "arith_l1", "math", "hotpotqa", "hotpotqa"]
    solutions = ["#### 1,000", "#### 7", "$\\boxed{\\frac12}$", "Answer: the Danube", "Answer: Vienna Danube"]
    truths = ["1000", "8", "0.5", "Danube", "Danube"]
    with RewardScorer(set(sources), timeout_s=30, num_workers=1) as scorer:
        batch = scorer.score(solutions, truths, sources)
        with pytest.raises(RewardFunctionError, match="unknown_source"):
            scorer.score(["x"], ["y"], ["unknown_source"])
    assert batch.scores == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert batch.details[3:] == [{"em": 1.0, "f1": 1.0}, {"em": 0.0, "f1": pytest.approx(2 / 3)}]
    assert batch.errors == batch.timeouts == 0


def test_scorer_checks_batch_lengths(misbehaving_scorer):
    with pytest.raises(ValueError, match="equal lengths"):
        misbehaving_scorer.score(["ok"], [], ["custom"])
