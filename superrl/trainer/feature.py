"""The one interface through which an optional part of training attaches to the loop.

The loop builds every enabled feature once, calls each at the same points of every run and step,
and checkpoints each one's state under its name, so neither `Trainer.__init__`, `train_step`, the
saved trainer state nor resume branch on any particular feature (the way torchtitan attaches its
optional components). A feature overrides only the hooks it needs; the defaults do nothing.
"""


class TrainerFeature:
    """Built as `Feature(config, arch)` (a Config and a ModelArch) when `Feature.enabled(config)`."""
    name: str  # key of its state in the trainer checkpoint

    @staticmethod
    def enabled(config) -> bool:
        """Whether `config` (a superrl.config.Config) turns this feature on."""
        raise NotImplementedError

    def start(self, trainer, logger) -> None:
        """Once per run, after any resume and the first weight sync, before the first step."""

    def shape_rewards(self, rewards, rows, model, pack) -> tuple:
        """Every step, before the advantages: `rewards` [P, K] (the task reward, already shaped by
        what came before), `rows` the step's local rollout rows (a batching.RowSet, prompt-major
        like the rewards), `model` the policy, `pack` builds micro-batches of rows. Returns the
        rewards the advantages see and metrics. Collective where it runs models."""
        return rewards, {}

    def before_update(self, update) -> None:
        """Every step, for each mini-batch's actor_update.ActorUpdate, before any optimizer step
        (after the old-log-prob pass, when one runs: actor_update.py)."""

    def after_update(self, metrics: dict) -> None:
        """After each of the policy's optimizer steps (`metrics["step_applied"]`: whether it was
        applied or skipped as non-finite)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """`state` is what `state_dict()` saved, or {} if the checkpoint has none for this feature."""
