"""The generic row every loader produces, and its validation.

Generic columns: ``prompt`` (a string or a list of chat messages ``{"role", "content"}``),
``ground_truth`` (a string, a list of strings for aliases, or a number, which is kept as its string),
``expert_response`` (the offline trajectory for the SFT loss; missing or null means none) and
``data_source``. verl-style rows that keep the answer in ``reward_model.ground_truth`` are accepted.
Every row also records ``origin`` (file and line/row) so later errors can point back at it.
"""
import math
from numbers import Real

GENERIC_COLUMNS = ("prompt", "ground_truth", "expert_response", "data_source")


class DataError(ValueError):
    """A malformed dataset file or row; the message names the file and line/row."""


def make_row(prompt, ground_truth, expert_response: str, data_source: str, origin: str) -> dict:
    return {"prompt": prompt, "ground_truth": ground_truth, "expert_response": expert_response,
            "data_source": data_source, "origin": origin}


def required_value(record: dict, column: str, origin: str):
    """A required column's value. A null is told apart from a missing key: parquet and HF tables
    store a row's absent value as null, so "missing" would send the user looking for the column."""
    if column not in record:
        raise DataError(f"{origin}: missing column {column!r}")
    if record[column] is None:
        raise DataError(f"{origin}: column {column!r} is null")
    return record[column]


def required_text(record: dict, column: str, origin: str) -> str:
    """A required non-empty string column."""
    value = required_value(record, column, origin)
    if not isinstance(value, str):
        raise DataError(f"{origin}: column {column!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{origin}: column {column!r} is empty")
    return value


def generic_row(record: dict, origin: str) -> dict:
    expert = record.get("expert_response")
    if expert is not None and not isinstance(expert, str):
        raise DataError(f"{origin}: column 'expert_response' must be a string, got {type(expert).__name__}")
    return make_row(prompt=_prompt(record, origin), ground_truth=_ground_truth(record, origin),
                    expert_response=expert or "", data_source=required_text(record, "data_source", origin),
                    origin=origin)


def _prompt(record: dict, origin: str) -> str | list[dict]:
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        return _messages(prompt, origin)
    return required_text(record, "prompt", origin)


def _messages(messages: list, origin: str) -> list[dict]:
    for number, message in enumerate(messages, 1):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataError(f"{origin}: prompt message {number} must be an object with string 'role' and "
                            f"'content'")
    if not any(message["content"].strip() for message in messages):
        raise DataError(f"{origin}: column 'prompt' is empty")
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def _ground_truth(record: dict, origin: str) -> str | list[str]:
    if record.get("ground_truth") is None and isinstance(record.get("reward_model"), dict):  # verl layout
        truth = required_value(record["reward_model"], "ground_truth", f"{origin}: column 'reward_model'")
    else:
        truth = required_value(record, "ground_truth", origin)
    if isinstance(truth, Real) and not isinstance(truth, bool):
        if not math.isfinite(truth):  # JSON's NaN / Infinity, or a pandas missing value in parquet
            raise DataError(f"{origin}: column 'ground_truth' is {truth!r}, not a finite number")
        return str(truth)
    if isinstance(truth, list) and truth and all(isinstance(item, str) and item.strip() for item in truth):
        return truth
    if isinstance(truth, str) and truth.strip():
        return truth
    raise DataError(f"{origin}: column 'ground_truth' must be a non-empty string, number or list of strings, "
                    f"got {truth!r:.80}")
