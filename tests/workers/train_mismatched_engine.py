"""`python -m superrl.train` whose rollout engine runs slightly other weights than the trainer: after
every weight sync, one engine tensor (env SUPERRL_TEST_ENGINE_TENSOR, an HF name) is scaled by
SUPERRL_TEST_ENGINE_SCALE in the embedded engine of every rank. A deterministic stand-in for an
engine in another precision, the same in every parallel layout, so the rollout correction has a real
mismatch to correct (raise rollout.parity_tolerance above it). Start-up, exit code and teardown are
superrl.train's own."""
import os
import sys

import torch

import superrl.train


def mismatch_every_sync(trainer_class, name: str, scale: float) -> None:
    sync_engine = trainer_class.sync_engine

    def sync_then_scale(trainer):
        stats = sync_engine(trainer)
        if trainer.engine is not None:
            with torch.no_grad():
                trainer.engine.state_dict()[name].mul_(scale)
            trainer.engine.weights_written()
        return stats

    trainer_class.sync_engine = sync_then_scale


def setup_with_mismatch(argv=None):
    launch = setup(argv)
    from superrl.trainer.loop import Trainer  # after init: megatron patches are in place

    mismatch_every_sync(Trainer, os.environ["SUPERRL_TEST_ENGINE_TENSOR"], float(os.environ["SUPERRL_TEST_ENGINE_SCALE"]))
    return launch


setup, superrl.train.setup = superrl.train.setup, setup_with_mismatch

if __name__ == "__main__":
    sys.exit(superrl.train.main(sys.argv[1:]))
