"""`python -m superrl.train --config FILE.yaml [dotted.key=value ...]` (also under torchrun)."""
import sys

from superrl import console

console.install()  # before megatron is imported: some of its warnings fire at import time
from superrl.distributed import abort_distributed, destroy_distributed  # noqa: E402
from superrl.trainer.launch import Launch, config_arguments, start  # noqa: E402
from superrl.trainer.preemption import PREEMPTED_EXIT_CODE, Preempted  # noqa: E402


def setup(argv=None) -> Launch:
    """Parse and check everything, then initialise distributed state."""
    return start(config_arguments("python -m superrl.train", __doc__).parse_args(argv), logs_metrics=True)


def main(argv=None) -> int:
    config, arch, ctx = setup(argv)
    from superrl.trainer.loop import Trainer  # after init: megatron patches are in place

    trainer, failed = Trainer(config, arch, ctx), False
    try:
        trainer.run()
    except Preempted as preempted:
        if ctx.rank == 0:
            print(f"superrl: {preempted}", flush=True)
        return PREEMPTED_EXIT_CODE
    except BaseException:
        failed = True
        raise
    finally:
        trainer.close(failed)
        (abort_distributed if failed else destroy_distributed)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
