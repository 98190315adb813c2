"""`algorithm.kl_coef > 0`: the frozen reference policy of the KL term.

Before each update it attaches log pi_ref of every token to the micro-batches; hybrid_loss adds the
KL term. It is rebuilt from the initial weights on every start, so it has no checkpoint state.
"""
from superrl.config import Config
from superrl.hf_config import ModelArch
from superrl.trainer.feature import TrainerFeature
from superrl.trainer.model_setup import build_model, load_initial_weights, with_mixed_precision
from superrl.trainer.step import forward_outputs


def build_reference_model(config: Config, arch: ModelArch):
    """Frozen copy of the initial policy in the policy's precision (forward only, no DDP, no optimizer)."""
    model = build_model(config, arch)
    load_initial_weights(model, config, arch, arch.padded_vocab_size(config.model.vocab_pad_multiple))
    model.requires_grad_(False)
    return with_mixed_precision(model)


class ReferenceKL(TrainerFeature):
    name = "reference_kl"

    @staticmethod
    def enabled(config: Config) -> bool:
        return config.algorithm.kl_coef > 0

    def __init__(self, config: Config, arch: ModelArch):
        self.model = build_reference_model(config, arch)

    def before_update(self, update) -> None:
        for mb, (logprobs, _) in zip(update.micro_batches, forward_outputs(self.model, update.micro_batches)):
            mb.ref_logprobs = logprobs
