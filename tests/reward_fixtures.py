"""Reward functions for trainer tests: dense and deterministic, so a random tiny model gets a mix
of solved (PG) and unsolved (SFT) prompts and every metric is exercised."""


def digit_fraction(solution_str: str, ground_truth: str) -> float:
    """Fraction of characters that are digits: nonzero for some random responses, rarely all."""
    if not solution_str:
        return 0.0
    return sum(ch.isdigit() for ch in solution_str) / len(solution_str)
