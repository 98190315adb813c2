"""Weights & Biases (trainer.loggers: wandb), on the logging rank: project `trainer.wandb_project`,
run name `trainer.wandb_run_name` (default: the basename of trainer.run_dir) and the full resolved
config. A resumed run continues the same wandb run: its id is kept in RUN_DIR/wandb_run_id. The
WANDB_* variables are wandb's own (WANDB_MODE=offline, WANDB_DIR, ...) and left to it; without
WANDB_DIR its files go to RUN_DIR/wandb."""
import dataclasses
import importlib.util
import os

from superrl.config import ConfigError

RUN_ID_FILE = "wandb_run_id"
EXTRA = "tracking"  # setup.py's extra that installs wandb


def require_wandb() -> None:
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"trainer.loggers includes wandb, but wandb is not installed: install the "
                          f"'{EXTRA}' extra (pip install -c constraints.txt -e \".[{EXTRA}]\")")


class WandbSink:
    def __init__(self, config, start_step: int):
        import wandb  # optional (the `tracking` extra): imported only when selected

        t = config.trainer
        self.run = wandb.init(project=t.wandb_project,
                              name=t.wandb_run_name or os.path.basename(os.path.normpath(t.run_dir)),
                              config=dataclasses.asdict(config), id=resumed_run_id(t.run_dir, start_step),
                              resume="allow", dir=os.environ.get("WANDB_DIR", t.run_dir))
        with open(os.path.join(t.run_dir, RUN_ID_FILE), "w") as f:
            f.write(self.run.id + "\n")

    def log(self, row: dict) -> None:
        # None stands for a non-finite value (metrics.jsonl's strict JSON): nothing to plot
        self.run.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=row["step"])

    def log_event(self, name: str, values: dict) -> None:
        """One-off records (e.g. the probe decision) are run-level facts: the run's summary."""
        self.run.summary.update({f"{name}/{key}": value for key, value in values.items()})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def resumed_run_id(run_dir: str, start_step: int):
    """The wandb run id kept in run_dir when resuming (start_step > 0); None (wandb picks a new
    one) for a fresh run or a run dir without one."""
    path = os.path.join(run_dir, RUN_ID_FILE)
    if start_step == 0 or not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip()
