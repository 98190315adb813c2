"""GSM8K-style reward: the final answer is a number written after ``####``.

Two extraction modes:

* ``strict`` (default): the number right after the *last* ``####`` in the response (an optional
  sign and ``$``, thousands commas, decimals and a trailing period are accepted; words after the
  number, e.g. units, are ignored). No ``####`` or no number after it scores 0.
* ``flexible``: the last number anywhere in the response (lm-eval's "flexible-extract").

Both sides are compared as decimals, so ``1,000`` == ``1000``, ``18.00`` == ``18`` and ``-0`` == ``0``.
The ground truth may be a bare number or a full GSM8K answer ending in ``#### N``.
"""
import re
from decimal import Decimal, InvalidOperation

# Thousands separators only in groups of three, so "3,4" reads as two numbers, not 34.
_UNSIGNED_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_AFTER_HASHES = re.compile(rf"\s*(-?)\s*\$?\s*({_UNSIGNED_NUMBER})")
_ANY_NUMBER = re.compile(rf"-?\$?(?:{_UNSIGNED_NUMBER})")
METHODS = ("strict", "flexible")


def extract_strict(text: str) -> str | None:
    """The number after the last ``####`` (sign kept, ``$`` dropped), or None."""
    _, hashes, tail = text.rpartition("####")
    if not hashes:
        return None
    match = _AFTER_HASHES.match(tail)
    return match.group(1) + match.group(2) if match else None


def extract_flexible(text: str) -> str | None:
    """The last number anywhere in ``text``, or None."""
    numbers = _ANY_NUMBER.findall(text)
    return numbers[-1].replace("$", "") if numbers else None


def to_decimal(answer: str) -> Decimal | None:
    """Parse a number written with optional ``$``, commas, spaces and a trailing period."""
    cleaned = answer.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def ground_truth_answer(ground_truth: str) -> str:
    """A bare number, or the ``#### N`` answer of a full GSM8K solution."""
    return extract_strict(ground_truth) or ground_truth.strip()


def answers_match(predicted: str, expected: str) -> bool:
    predicted_value, expected_value = to_decimal(predicted), to_decimal(expected)
    return predicted_value is not None and predicted_value == expected_value


def compute_score(solution_str: str, ground_truth: str, method: str = "strict") -> float:
    """1.0 when the extracted answer equals the ground truth numerically, else 0.0."""
    if method not in METHODS:
        raise ValueError(f"gsm8k method must be one of {METHODS}, got {method!r}")
    extract = extract_strict if method == "strict" else extract_flexible
    predicted = extract(solution_str)
    if predicted is None:
        return 0.0
    return float(answers_match(predicted, ground_truth_answer(str(ground_truth))))
