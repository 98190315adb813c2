"""RUN_DIR/metrics.jsonl: one JSON object per step (and one per event such as the probe), flushed
as written so a crash loses nothing logged."""
import json
import os

FILE = "metrics.jsonl"


class JsonlSink:
    def __init__(self, config, start_step: int):
        path = os.path.join(config.trainer.run_dir, FILE)
        _drop_rows_after(path, start_step)
        self.file = open(path, "a")

    def log(self, row: dict) -> None:
        self._write(row)

    def log_event(self, name: str, values: dict) -> None:
        self._write({"event": name, **values})

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self, failed: bool = False) -> None:
        self.file.close()


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
    with open(os.path.join(run_dir, FILE)) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [row for row in rows if "step" in row]
