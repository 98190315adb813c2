"""The reward worker process: import the reward functions, then score the calls the pool sends.

Protocol over one pipe (see ``superrl.rewards.pool``):

* worker -> pool, once: ``("ready", None)`` after importing every spec, or ``("load_error", message)``;
* pool -> worker: a list of ``(slot, spec, solution_str, ground_truth)`` calls, or ``None`` to exit;
* worker -> pool, one per call and in order: ``(slot, status, payload)`` with status ``ok``
  (payload ``(score, details)``), ``error`` or ``invalid`` (payload: a message).

Results are sent call by call so that the pool knows exactly which call is running when one hangs.
Return values are checked here, so only plain floats ever cross the pipe.
"""
import math
import signal
from numbers import Real

from superrl.rewards.registry import load_reward_function

OK, ERROR, INVALID = "ok", "error", "invalid"


class InvalidReward(ValueError):
    """A reward function returned something that is not a finite number (or a dict with one)."""


def worker_main(conn, specs: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it closes the pool
    try:
        functions = {spec: load_reward_function(spec) for spec in specs}
    except Exception as error:
        conn.send(("load_error", str(error)))
        return
    conn.send(("ready", None))
    while (calls := conn.recv()) is not None:
        for slot, spec, solution_str, ground_truth in calls:
            conn.send((slot, *run_call(functions, spec, solution_str, ground_truth)))


def run_call(functions: dict, spec: str, solution_str, ground_truth) -> tuple[str, object]:
    try:
        if spec not in functions:
            functions[spec] = load_reward_function(spec)
        value = functions[spec](solution_str, ground_truth)
    except Exception as error:
        return ERROR, f"{spec} raised {type(error).__name__}: {error}"
    try:
        return OK, to_reward(value)
    except InvalidReward as error:
        return INVALID, f"{spec} {error}"


def to_reward(value) -> tuple[float, dict[str, float]]:
    """``(score, details)`` from a number or a dict with a numeric ``score`` (other finite numbers kept)."""
    if isinstance(value, dict):
        if "score" not in value:
            raise InvalidReward(f"returned a dict without 'score' (keys: {sorted(map(str, value))})")
        details = {str(key): float(item) for key, item in value.items()
                   if key != "score" and _is_finite_number(item)}
        return _finite_score(value["score"]), details
    return _finite_score(value), {}


def _finite_score(value) -> float:
    if not _is_number(value):
        raise InvalidReward(f"returned {type(value).__name__} {value!r:.80}, expected a number")
    if not math.isfinite(value):
        raise InvalidReward(f"returned non-finite score {value!r}")
    return float(value)


def _is_number(value) -> bool:
    return isinstance(value, Real)  # bool, int, float and numpy scalars; not str or tensors


def _is_finite_number(value) -> bool:
    return _is_number(value) and math.isfinite(value)
