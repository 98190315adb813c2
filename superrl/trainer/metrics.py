"""The one metrics interface of the trainer loop: on the logging rank, each step row goes to the
sinks of `trainer.loggers` (trainer/sinks/: metrics.jsonl, TensorBoard, wandb) and to the tqdm bar;
on every other rank it does nothing."""
import math
import os

import psutil

from superrl.trainer.progress import ProgressBar
from superrl.trainer.sinks import build_sinks
from superrl.trainer.sinks.jsonl import read_metrics  # noqa: F401  (the reader beside its writer; plot and tests use it from here)


class MetricsLogger:
    def __init__(self, config, start_step: int = 0, enabled: bool = True):
        """`config`: the run's Config (sinks, trainer.run_dir, trainer.total_steps; wandb logs
        all of it); `start_step`: the step a resumed run continues from."""
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(config.trainer.run_dir, exist_ok=True)
        self.sinks = build_sinks(config, start_step)
        self.bar = ProgressBar(config.trainer.total_steps, start_step)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        for sink in self.sinks:
            sink.log(row)
        self.bar.update(row)

    def log_event(self, name: str, values: dict) -> None:
        """A one-off record (e.g. the probe decision), outside the step rows."""
        if self.enabled:
            plain = {k: _plain(v) for k, v in values.items()}
            for sink in self.sinks:
                sink.log_event(name, plain)

    def close(self, failed: bool = False) -> None:
        """`failed`: the run is ending on an exception (wandb marks the run failed)."""
        if self.enabled:
            for sink in self.sinks:
                sink.close(failed)
            self.bar.close()


def resident_memory_mb() -> float:
    """This process's resident set size, for watching leaks over long runs."""
    return psutil.Process().memory_info().rss / 2**20


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # keep metrics.jsonl strict JSON
    return value
