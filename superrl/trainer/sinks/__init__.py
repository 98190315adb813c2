"""The metric sinks that `trainer.loggers` selects (names in superrl.config.LOGGERS), each one
concern: a sink takes the step rows `log(row)` (plain values, `row["step"]` the step), one-off
records `log_event(name, values)` and `close(failed)`. MetricsLogger (trainer/metrics.py) fans
out to them on the logging rank."""
from superrl.trainer.sinks.jsonl import JsonlSink
from superrl.trainer.sinks.tensorboard import TensorBoardSink
from superrl.trainer.sinks.wandb_run import WandbSink, require_wandb

SINKS = {"jsonl": JsonlSink, "tensorboard": TensorBoardSink, "wandb": WandbSink}


def require_sink_packages(loggers: list) -> None:
    """At start-up, before any process group: an optional sink's package is installed."""
    if "wandb" in loggers:
        require_wandb()


def build_sinks(config, start_step: int) -> list:
    """The sinks of `config.trainer.loggers`, in that order, opened in trainer.run_dir."""
    return [SINKS[name](config, start_step) for name in config.trainer.loggers]
