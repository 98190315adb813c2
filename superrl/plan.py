"""`python -m superrl.plan --config FILE.yaml [dotted.key=value ...] [--gpu-gb N] [--world-size N]`

Prints the per-GPU memory plan of a run (superrl/trainer/memory_plan.py, docs/memory_plan.md)
before anything is allocated: from the config and the model's config.json only, with no GPU, no
model and no process group. Exit code 0: the plan fits; 1: it does not.
"""
import os
import sys

from superrl.config import load_config, validate_launch
from superrl.hf_config import load_arch
from superrl.trainer.launch import config_arguments
from superrl.trainer.memory_plan import GiB, Target, plan_memory


def parse_args(argv=None):
    parser = config_arguments("python -m superrl.plan", __doc__)
    parser.add_argument("--gpu-gb", type=float, default=80.0,
                        help="one GPU's memory in GiB (default 80: an H100 80GB reports 79.2)")
    parser.add_argument("--world-size", type=int, default=None,
                        help="ranks of the run (nodes x GPUs per node); default $WORLD_SIZE, else "
                             "parallel.tp x parallel.pp (one data-parallel replica)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    arch = load_arch(config.model.hf_dir)
    world_size = args.world_size or int(os.environ.get("WORLD_SIZE", config.parallel.tp * config.parallel.pp))
    validate_launch(config, arch, world_size)
    # A GPU run uses Transformer Engine's layers unless the config turns them off (GPU installs have it).
    target = Target(int(args.gpu_gb * GiB), transformer_engine=config.model.transformer_engine != "off")
    plan = plan_memory(config, arch, world_size, target)
    print(plan.table())
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
