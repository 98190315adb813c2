"""Reward functions that tests name as ``reward.function`` / scorer specs (``reward_fixtures:<name>``).

Reward worker processes import this module, so it stays light (no torch, no math-verify): workers
are restarted after every hang or crash and re-import it each time.
"""
import math
import os
import signal
import time

# What a misbehaving reward function returns for each behaviour that does not raise, hang or exit.
RETURNED = {"ok": 1.0, "nan": math.nan, "inf": -math.inf, "str": "1.0", "none": None, "tensor": [1.0],
            "dict": {"score": 0.5, "f1": 0.25, "note": "text"}, "nodict": {"f1": 1.0}}


def has_digit(solution_str: str, ground_truth: str) -> float:
    """1 when the response contains a digit: about a quarter of random 12-token responses do.

    Deterministic, and dense enough that a random tiny model gets a mix of solved (PG) and unsolved
    (SFT) prompts, so every trainer metric is exercised."""
    return float(any(ch.isdigit() for ch in solution_str))


def misbehave(behaviour: str):
    """Raise, hang, kill the worker, or return ``RETURNED[behaviour]``."""
    if behaviour == "raise":
        raise RuntimeError("reward bug")
    if behaviour == "hang":
        time.sleep(600)
    if behaviour == "exit":
        os._exit(3)
    return RETURNED[behaviour]


def misbehaving_reward(solution_str, ground_truth):
    """Behaves as the solution text says (unit tests pass the behaviour as the response)."""
    return misbehave(solution_str)


def misbehaving_by_truth(solution_str, ground_truth):
    """Behaves as the row's ground truth says, so a trainer run gets a known mix of failures
    whatever its random model writes."""
    return misbehave(ground_truth)


SIGTERM_FILE_ENV = "SUPERRL_TEST_SIGTERM_FILE"


def sigterm_when_asked(solution_str: str, ground_truth: str) -> float:
    """`has_digit`, but first: once the file named by $SUPERRL_TEST_SIGTERM_FILE holds a pid, send
    that process SIGTERM (one call does: the file is removed) and stall 1 s, so that the signal
    lands while the trainer is in its rollout."""
    try:
        with open(os.environ[SIGTERM_FILE_ENV]) as f:
            pid = int(f.read())
        os.remove(os.environ[SIGTERM_FILE_ENV])
    except (KeyError, OSError, ValueError):  # not asked (yet), or another call took the request
        return has_digit(solution_str, ground_truth)
    os.kill(pid, signal.SIGTERM)
    time.sleep(1.0)
    return has_digit(solution_str, ground_truth)
