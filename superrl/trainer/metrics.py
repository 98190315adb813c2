"""Metrics sinks on the logging rank: one JSON object per step in metrics.jsonl, TensorBoard
scalars, and a tqdm bar showing reward and switch state."""
import json
import math
import os

import psutil
from tqdm import tqdm


class MetricsLogger:
    def __init__(self, run_dir: str, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        _drop_rows_after(os.path.join(run_dir, "metrics.jsonl"), start_step)
        self.jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=start_step, desc="superrl", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{row.get('reward/mean', float('nan')):.3f}",
                             sft=f"{row.get('switch/sft_fraction', float('nan')):.2f}")

    def log_event(self, name: str, values: dict) -> None:
        """A one-off record (e.g. the probe decision) in metrics.jsonl, outside the step rows."""
        if self.enabled:
            self.jsonl.write(json.dumps({"event": name, **{k: _plain(v) for k, v in values.items()}}) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
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


def _drop_rows_after(path: str, step: int) -> None:
    """On resume, rows logged after the checkpoint (before a crash) are replayed: drop them."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(kept)


def read_metrics(run_dir: str) -> list:
    """The per-step rows of metrics.jsonl (events such as the probe are skipped)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [row for row in rows if "step" in row]
