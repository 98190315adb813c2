"""`algorithm.switch.mode: probe` (SuperRL v1): before the first step, one rollout of
`algorithm.switch.probe_prompts` prompts decides for the whole run whether rewards are sparse
(AdaptiveSwitch.probe). The decision is part of the switch's checkpointed state, so a resumed run
does not probe again."""
from megatron.core import parallel_state as mpu

from superrl.config import Config
from superrl.data import PromptDataLoader
from superrl.hf_config import ModelArch
from superrl.trainer.feature import TrainerFeature

PROBE_STEP = -1  # the probe's rollouts are seeded as a step before the first one


class RewardProbe(TrainerFeature):
    name = "probe"

    @staticmethod
    def enabled(config: Config) -> bool:
        return config.algorithm.switch.mode == "probe"

    def __init__(self, config: Config, arch: ModelArch):
        self.num_prompts = config.algorithm.switch.probe_prompts
        self.seed = config.trainer.seed + 1  # its own prompt order, apart from the training loader's

    def start(self, trainer, logger) -> None:
        if trainer.switch.needs_probe:
            logger.log_event("probe", self.probe(trainer))

    def probe(self, trainer) -> dict:
        examples = trainer.example_set.examples
        loader = PromptDataLoader(examples, min(self.num_prompts, len(examples)), seed=self.seed)
        rollouts = trainer.rollout(next(loader), seed=trainer.rollout_seed(PROBE_STEP))
        return trainer.switch.probe(rollouts.rewards, group=mpu.get_data_parallel_group())
