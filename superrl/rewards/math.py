"""MATH-style reward: the last ``\\boxed{}`` of the response, equivalence checked by math-verify.

math-verify guards parsing and comparison with ``signal.alarm``, which only works in the main
thread. Elsewhere its time-outs are switched off and the caller must bound the call (the reward
process pool in ``superrl.rewards.pool`` does; its workers call rewards in their main thread).
"""
import threading

from math_verify import parse, verify

from superrl.rewards.boxed import last_boxed_content


def compute_score(solution_str: str, ground_truth: str) -> float:
    """1.0 when the last boxed answer equals ``ground_truth`` (a bare answer or a boxed solution)."""
    predicted = last_boxed_content(solution_str)
    if predicted is None:
        return 0.0
    expected = last_boxed_content(ground_truth) or ground_truth
    if _squash(predicted) == _squash(expected):  # skips sympy for the common verbatim match
        return 1.0
    return float(is_equivalent(predicted, expected))


def is_equivalent(predicted: str, expected: str) -> bool:
    in_main_thread = threading.current_thread() is threading.main_thread()
    parse_timeout = {} if in_main_thread else {"parsing_timeout": None}
    verify_timeout = {} if in_main_thread else {"timeout_seconds": None}
    gold = parse(f"${expected}$", **parse_timeout)
    answer = parse(f"${predicted}$", **parse_timeout)
    return bool(gold and answer and verify(gold, answer, **verify_timeout))


def _squash(answer: str) -> str:
    return "".join(answer.split())
