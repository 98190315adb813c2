"""Native dataset schemas (GSM8K, MATH, HotpotQA) -> generic rows, and schema detection.

Adapters write the prompt themselves, so they append the instruction that tells the model the
answer format its reward function reads. Generic rows are used as given (their prompt is assumed
to carry its own instruction). An optional ``data_source`` column overrides each adapter's default
name (``tools/make_arith_dataset.py`` writes GSM8K-schema rows with ``data_source: arith_l1`` etc.).
"""
import re

from superrl.data.rows import DataError, generic_row, make_row, required_text
from superrl.rewards.boxed import last_boxed_content
from superrl.rewards.gsm8k import extract_strict

HASH_INSTRUCTION = "Give the final answer after ####."
BOXED_INSTRUCTION = "Put the final answer in \\boxed{}."
ANSWER_INSTRUCTION = "Give a short final answer after 'Answer:'."
_CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")  # GSM8K's "<<48/2=24>>" tool traces


def detect_schema(columns, origin: str) -> str:
    columns = set(columns)
    if "prompt" in columns:
        return "generic"
    if {"problem", "solution"} <= columns:
        return "math"
    if {"question", "answer", "context"} <= columns:
        return "hotpotqa"
    if {"question", "answer"} <= columns:
        return "gsm8k"
    raise DataError(f"{origin}: cannot tell the schema from columns {sorted(columns)}; expected generic "
                    f"(prompt, ground_truth, data_source), gsm8k (question, answer), math (problem, solution) "
                    f"or hotpotqa (question, answer, context, supporting_facts)")


def adapt(schema: str, record: dict, origin: str) -> dict:
    return _ADAPTERS[schema](record, origin)


def gsm8k_row(record: dict, origin: str) -> dict:
    question = required_text(record, "question", origin)
    answer = required_text(record, "answer", origin)
    final = extract_strict(answer)
    if final is None:
        raise DataError(f"{origin}: column 'answer' does not end in '#### <number>'")
    return make_row(prompt=f"{question.strip()}\n{HASH_INSTRUCTION}", ground_truth=final.replace(",", ""),
                    expert_response=_CALCULATOR_ANNOTATION.sub("", answer).strip(),
                    data_source=_data_source(record, "gsm8k", origin), origin=origin)


def math_row(record: dict, origin: str) -> dict:
    problem = required_text(record, "problem", origin)
    solution = required_text(record, "solution", origin)
    final = last_boxed_content(solution)
    if not final:
        raise DataError(f"{origin}: column 'solution' has no \\boxed{{}} answer")
    return make_row(prompt=f"{problem.strip()}\n{BOXED_INSTRUCTION}", ground_truth=final,
                    expert_response=solution.strip(), data_source=_data_source(record, "math", origin),
                    origin=origin)


def hotpotqa_row(record: dict, origin: str) -> dict:
    """Prompt = context paragraphs, then question and instruction (so left truncation drops context first).

    The expert response is the supporting-fact sentences followed by ``Answer: <answer>``.
    """
    question = required_text(record, "question", origin)
    answer = required_text(record, "answer", origin)
    paragraphs = _paragraphs(record.get("context"), origin)
    facts = _supporting_facts(record.get("supporting_facts"), origin)
    context = "\n".join(f"{title}: {' '.join(sentences)}" for title, sentences in paragraphs.items())
    evidence = [paragraphs[title][index] for title, index in facts
                if title in paragraphs and index < len(paragraphs[title])]  # real HotpotQA has a few dangling ids
    return make_row(prompt=f"{context}\n\nQuestion: {question.strip()}\n{ANSWER_INSTRUCTION}", ground_truth=answer,
                    expert_response="\n".join(filter(None, [" ".join(evidence), f"Answer: {answer}"])),
                    data_source=_data_source(record, "hotpotqa", origin), origin=origin)


def _paragraphs(context, origin: str) -> dict[str, list[str]]:
    """``[[title, [sentences]], ...]`` (original release) or ``{"title": [...], "sentences": [[...]]}`` (HF)."""
    if isinstance(context, dict):
        context = list(zip(context.get("title") or [], context.get("sentences") or []))
    if not isinstance(context, list) or not context:
        raise DataError(f"{origin}: column 'context' must be a non-empty list of [title, sentences] pairs")
    paragraphs = {}
    for pair in context:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], list) and all(isinstance(s, str) for s in pair[1])):
            raise DataError(f"{origin}: column 'context' has an entry that is not [title, [sentences]]: {pair!r:.80}")
        paragraphs[pair[0]] = [sentence.strip() for sentence in pair[1]]
    return paragraphs


def _supporting_facts(facts, origin: str) -> list[tuple[str, int]]:
    """``[[title, sentence_index], ...]`` or ``{"title": [...], "sent_id": [...]}``."""
    if isinstance(facts, dict):
        facts = list(zip(facts.get("title") or [], facts.get("sent_id") or []))
    if not isinstance(facts, list) or not all(
            isinstance(fact, (list, tuple)) and len(fact) == 2 and isinstance(fact[0], str)
            and isinstance(fact[1], int) for fact in facts):
        raise DataError(f"{origin}: column 'supporting_facts' must be a list of [title, sentence_index] pairs")
    return [(title, index) for title, index in facts]


def _data_source(record: dict, default: str, origin: str) -> str:
    return required_text(record, "data_source", origin) if "data_source" in record else default


_ADAPTERS = {"generic": generic_row, "gsm8k": gsm8k_row, "math": math_row, "hotpotqa": hotpotqa_row}
