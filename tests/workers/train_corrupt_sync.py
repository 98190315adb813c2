"""`python -m superrl.train` whose weight sync at the end of step 1 is corrupted: right after it, one
engine tensor (env SUPERRL_TEST_CORRUPT_TENSOR, an HF name) is scaled by SUPERRL_TEST_CORRUPT_SCALE
in the live embedded engine of global rank SUPERRL_TEST_CORRUPT_RANK, as a faulty transport or
mapping would leave it. Without the env the run is clean. Each rank writes {"error",
"optimizer_steps", "completed_steps"} (write_result) when its run ends; start-up, exit code and
teardown are superrl.train's own."""
import os
import sys

import torch

import superrl.train
from dist_harness import write_result

CORRUPTED_SYNC = 2  # the first sync starts the run; the second ends step 1


def corrupt_after_sync(trainer, name: str, scale: float, rank: int) -> None:
    sync, calls = trainer.sync.sync, [0]

    def sync_then_corrupt():
        stats = sync()
        calls[0] += 1
        if calls[0] == CORRUPTED_SYNC and trainer.engine is not None and trainer.ctx.rank == rank:
            with torch.no_grad():
                trainer.engine.state_dict()[name].mul_(scale)
            trainer.engine.weights_written()
        return stats

    trainer.sync.sync = sync_then_corrupt


def record_runs(trainer_class) -> None:
    """Trainer.run corrupts the sync when asked, and records how the run ended."""
    run = trainer_class.run

    def run_and_record(trainer):
        error = None
        if os.environ.get("SUPERRL_TEST_CORRUPT_TENSOR"):
            corrupt_after_sync(trainer, os.environ["SUPERRL_TEST_CORRUPT_TENSOR"],
                               float(os.environ["SUPERRL_TEST_CORRUPT_SCALE"]),
                               int(os.environ.get("SUPERRL_TEST_CORRUPT_RANK", "0")))
        try:
            return run(trainer)
        except Exception as exc:
            error = str(exc)
            raise
        finally:
            write_result({"error": error, "optimizer_steps": trainer.state.scheduler.num_steps,
                          "completed_steps": trainer.step})

    trainer_class.run = run_and_record


def setup_and_record(argv=None):
    launch = setup(argv)
    from superrl.trainer.loop import Trainer  # after init: megatron patches are in place

    record_runs(Trainer)
    return launch


setup, superrl.train.setup = superrl.train.setup, setup_and_record

if __name__ == "__main__":
    sys.exit(superrl.train.main(sys.argv[1:]))
