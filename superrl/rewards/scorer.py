"""Batch reward scoring: dispatch each row to its data source's reward function, isolated.

A reward function that raises, crashes its worker, hangs past ``timeout_s`` or returns something
that is not a finite number gives reward 0 for that row and is counted, so the trainer logs
``reward/errors`` and ``reward/timeouts`` instead of crashing or stalling. Each distinct failure
message (it names the function and the cause) is also logged as a warning the first time it
occurs, up to ``MAX_LOGGED_FAILURES`` per scorer, so a broken reward function is visible without
flooding the log of a long run.
"""
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from superrl.rewards.pool import OK, TIMEOUT, CallResult, RewardWorkerPool
from superrl.rewards.registry import resolve_reward_specs

MAX_MESSAGES = 5  # distinct failure messages kept per batch for the log
MAX_LOGGED_FAILURES = 20  # distinct failure messages logged per scorer; later ones are only counted
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardBatch:
    scores: list[float]
    details: list[dict[str, float]]  # other numbers a function returned (e.g. hotpotqa em/f1), per row
    errors: int  # raised, crashed the worker, or returned a non-finite / non-numeric value
    timeouts: int
    messages: list[str]

    @classmethod
    def from_results(cls, results: Sequence[CallResult]) -> "RewardBatch":
        failures = [result for result in results if result.status != OK]
        timeouts = sum(result.status == TIMEOUT for result in failures)
        messages = list(dict.fromkeys(result.message for result in failures))[:MAX_MESSAGES]
        return cls(scores=[result.score for result in results], details=[result.details for result in results],
                   errors=len(failures) - timeouts, timeouts=timeouts, messages=messages)

    def metrics(self) -> dict[str, float]:
        return {"reward/errors": float(self.errors), "reward/timeouts": float(self.timeouts)}


class RewardScorer:
    """Scores responses with per-source reward functions (or the ``reward.function`` override).

    ``data_sources`` are the sources the datasets contain: their functions are imported here, so a
    bad ``reward.function`` or an unknown source fails at load time. Call ``close()`` when done.
    """

    def __init__(self, data_sources: Iterable[str], function: str | None = None, *, timeout_s: float = 10.0,
                 num_workers: int = 2, chunk_size: int = 64, start_method: str = "forkserver"):
        self._override = function
        self._specs = resolve_reward_specs(data_sources, function)
        self._pool = RewardWorkerPool(self._specs.values(), num_workers=num_workers, timeout_s=timeout_s,
                                      chunk_size=chunk_size, start_method=start_method)
        self._logged: set[str] = set()

    def score(self, solutions: Sequence[str], ground_truths: Sequence, data_sources: Sequence[str]) -> RewardBatch:
        if not len(solutions) == len(ground_truths) == len(data_sources):
            raise ValueError(f"score() needs equal lengths, got {len(solutions)} solutions, "
                             f"{len(ground_truths)} ground truths, {len(data_sources)} data sources")
        for source in set(data_sources) - self._specs.keys():  # a source not declared at load time
            self._specs.update(resolve_reward_specs([source], self._override))
        calls = [(self._specs[source], solution, truth)
                 for solution, truth, source in zip(solutions, ground_truths, data_sources)]
        batch = RewardBatch.from_results(self._pool.run(calls))
        self._log_new_failures(batch.messages)
        return batch

    def _log_new_failures(self, messages: list[str]) -> None:
        for message in messages:
            if len(self._logged) >= MAX_LOGGED_FAILURES:
                return
            if message not in self._logged:
                self._logged.add(message)
                _log.warning("superrl: reward scored 0 (counted in reward/errors or reward/timeouts): %s", message)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
