"""RUN_DIR/tensorboard: every finite numeric metric of a step row as a scalar at that step."""
import math
import os


class TensorBoardSink:
    def __init__(self, config, start_step: int):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when selected

        self.writer = SummaryWriter(os.path.join(config.trainer.run_dir, "tensorboard"))

    def log(self, row: dict) -> None:
        for key, value in row.items():
            if key != "step" and _is_scalar(value):
                self.writer.add_scalar(key, value, row["step"])

    def log_event(self, name: str, values: dict) -> None:
        """Events are not time series: metrics.jsonl keeps them."""

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
