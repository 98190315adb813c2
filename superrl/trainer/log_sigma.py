"""`algorithm.hybrid.weighting: log_sigma`: the learnable loss weights s_pg, s_sft and their Adam.

They live on every rank but only the last pipeline stage, where the loss is, gets gradients; those
are summed over DP like the model's (loss-normalisation contract: model_setup.py).
"""
import torch
from megatron.core import parallel_state as mpu

from superrl.algorithms.hybrid import LogSigmaWeights
from superrl.config import Config
from superrl.hf_config import ModelArch
from superrl.trainer.feature import TrainerFeature
from superrl.weights.checkpoint_manifest import CheckpointError


class LearnableLossWeights(TrainerFeature):
    name = "log_sigma"

    @staticmethod
    def enabled(config: Config) -> bool:
        return config.algorithm.hybrid.weighting == "log_sigma"

    def __init__(self, config: Config, arch: ModelArch):
        self.weights = LogSigmaWeights.from_config(config.algorithm.hybrid)
        self.optimizer = torch.optim.Adam(self.weights.parameters(), lr=config.optim.lr)

    def before_update(self, update) -> None:
        update.log_sigma = self.weights

    def after_update(self, metrics: dict) -> None:
        """A skipped (non-finite) policy step leaves these weights as they were too."""
        if not mpu.is_pipeline_last_stage():
            return
        self.weights.all_reduce_grads(mpu.get_data_parallel_group())
        if metrics["step_applied"]:
            self.optimizer.step()
        self.optimizer.zero_grad()

    def state_dict(self) -> dict:
        return {"weights": self.weights.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            raise CheckpointError("the checkpoint has no log-sigma weights: it was saved by a run with "
                                  "another algorithm.hybrid.weighting")
        self.weights.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
