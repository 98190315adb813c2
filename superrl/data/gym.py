"""GSM8K-style rows generated offline by reasoning-gym's ``gsm_symbolic`` (seeded templates).

Used from a data file list as ``reasoning_gym:gsm_symbolic?size=500&seed=1``. gsm_symbolic ships
step-by-step solutions ending in ``#### N`` (``metadata.answer_cot``), which become the expert
response. Its questions end with "Give the result as your final answer. Do not include units.";
that sentence is replaced by our ``####`` instruction so the reward's strict extraction applies.
Different seeds give different draws, not guaranteed disjoint ones (templates repeat).
"""
from urllib.parse import parse_qs, urlsplit

from superrl.data.adapters import HASH_INSTRUCTION
from superrl.data.rows import DataError, make_row

GYM_PREFIX = "reasoning_gym:"
_SUPPORTED = ("gsm_symbolic",)
_GYM_SUFFIX = "Give the result as your final answer. Do not include units."


def gym_rows(spec: str) -> list[dict]:
    """Rows for a ``reasoning_gym:NAME?size=N&seed=S`` entry."""
    parts = urlsplit(spec[len(GYM_PREFIX):])
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = set(options) - {"size", "seed"}
    if parts.path not in _SUPPORTED or unknown:
        raise DataError(f"{spec}: expected reasoning_gym:{'|'.join(_SUPPORTED)}?size=N&seed=S"
                        + (f" (unknown options {sorted(unknown)})" if unknown else ""))
    try:
        size, seed = int(options.get("size", 500)), int(options.get("seed", 0))
    except ValueError:
        raise DataError(f"{spec}: size and seed must be integers") from None
    return gsm_symbolic_rows(size, seed)


def gsm_symbolic_rows(size: int, seed: int, data_source: str = "gsm_symbolic") -> list[dict]:
    import reasoning_gym  # deferred: only needed when generating

    rows = []
    for index, entry in enumerate(reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)):
        question = entry["question"].replace(_GYM_SUFFIX, "").strip()
        rows.append(make_row(prompt=f"{question}\n{HASH_INSTRUCTION}", ground_truth=str(entry["answer"]),
                             expert_response=entry["metadata"]["answer_cot"], data_source=data_source,
                             origin=f"reasoning_gym:gsm_symbolic seed={seed} item {index + 1}"))
    return rows
