"""`python -m superrl.train --config FILE.yaml [dotted.key=value ...]` (also under torchrun)."""
import argparse
import sys

from superrl.config import Config, load_config, validate_context_length, validate_parallelism
from superrl.distributed import destroy_distributed, init_distributed, world_size_from_env
from superrl.hf_config import load_arch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m superrl.train", description=__doc__)
    p.add_argument("--config", required=True, help="YAML config (SPEC 7.3 keys)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2 optim.lr=1e-5")
    return p.parse_args(argv)


def setup(argv=None) -> tuple:
    """Parse, validate (before any process group exists), then initialise distributed state."""
    args = parse_args(argv)
    config: Config = load_config(args.config, args.overrides)
    arch = load_arch(config.model.hf_dir)
    validate_parallelism(config, arch, world_size_from_env())
    validate_context_length(config, arch)
    ctx = init_distributed(config.parallel.tp, config.parallel.pp, config.trainer.seed,
                           timeout_s=config.trainer.dist_timeout_s)
    return config, arch, ctx


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
