"""`python -m superrl.train --config FILE.yaml [dotted.key=value ...]` (also under torchrun)."""
import sys

from superrl.distributed import destroy_distributed
from superrl.trainer.launch import Launch, config_arguments, start


def setup(argv=None) -> Launch:
    """Parse and check everything, then initialise distributed state."""
    return start(config_arguments("python -m superrl.train", __doc__).parse_args(argv))


def main(argv=None) -> int:
    config, arch, ctx = setup(argv)
    from superrl.trainer.loop import Trainer  # after init: megatron patches are in place

    trainer = Trainer(config, arch, ctx)
    try:
        trainer.run()
    finally:
        trainer.close()
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
