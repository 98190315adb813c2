"""Reward functions for trainer tests: deterministic, and dense enough that a random tiny model
gets a mix of solved (PG) and unsolved (SFT) prompts, so every metric is exercised."""


def has_digit(solution_str: str, ground_truth: str) -> float:
    """1 when the response contains a digit: about a quarter of random 12-token responses do."""
    return float(any(ch.isdigit() for ch in solution_str))
