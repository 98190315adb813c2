"""`python -m superrl.train` with NaN injected into the last stage's log-probs during the training
forward of chosen steps (env SUPERRL_TEST_NAN_STEPS="2,3"). Real trainer, model and optimizer: only
the values are poisoned, as a numerically diverging model would poison them."""
import os
import sys

import torch

from superrl.distributed import destroy_distributed
from superrl.train import setup
from superrl.weights.load import unwrap_model


def main() -> None:
    config, arch, ctx = setup(sys.argv[1:])
    from superrl.trainer.loop import Trainer

    trainer = Trainer(config, arch, ctx)
    bad_steps = {int(s) for s in os.environ["SUPERRL_TEST_NAN_STEPS"].split(",")}

    def poison(module, args, output):
        if torch.is_grad_enabled() and trainer.step + 1 in bad_steps and isinstance(output, tuple):
            logprobs, entropy = output
            return logprobs * float("nan"), entropy

    unwrap_model(trainer.state.model).register_forward_hook(poison)
    try:
        trainer.run()
    finally:
        trainer.close()
        destroy_distributed()


if __name__ == "__main__":
    main()
