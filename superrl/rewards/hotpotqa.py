"""HotpotQA reward: exact match (the score) and token F1, with SQuAD answer normalisation.

Extraction rule: the text after the *last* ``Answer:`` marker (case-insensitive), up to the end of
the first non-empty line after it; a response without the marker is taken whole. Normalisation
lowercases, strips punctuation and the articles a/an/the, and collapses whitespace. With several
ground truths (aliases) EM and F1 are each the maximum over them.
"""
import re
import string
from collections import Counter

_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# As in the official HotpotQA evaluation: yes/no answers get no partial token credit.
_CLOSED_ANSWERS = {"yes", "no", "noanswer"}


def extract_answer(solution_str: str) -> str:
    markers = list(_MARKER.finditer(solution_str))
    if not markers:
        return solution_str.strip()
    lines = solution_str[markers[-1].end():].strip().splitlines()
    return lines[0].strip() if lines else ""


def normalize_answer(text: str) -> str:
    without_punctuation = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", without_punctuation).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    predicted, expected = normalize_answer(prediction), normalize_answer(truth)
    if (predicted in _CLOSED_ANSWERS or expected in _CLOSED_ANSWERS) and predicted != expected:
        return 0.0
    common = Counter(predicted.split()) & Counter(expected.split())
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted.split()), overlap / len(expected.split())
    return 2 * precision * recall / (precision + recall)


def compute_score(solution_str: str, ground_truth: str | list[str]) -> dict:
    """``{"score": EM, "em": EM, "f1": F1}`` of the extracted answer, best over the ground truths."""
    truths = [ground_truth] if isinstance(ground_truth, str) else list(ground_truth)
    if not truths:
        raise ValueError("hotpotqa ground_truth is an empty list")
    prediction = extract_answer(solution_str)
    em = max(exact_match(prediction, truth) for truth in truths)
    f1 = max(f1_score(prediction, truth) for truth in truths)
    return {"score": em, "em": em, "f1": f1}
