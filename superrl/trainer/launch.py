"""Start-up shared by `superrl.train` and `superrl.eval`: command line -> config -> model shape ->
every check -> process groups. No process group exists until every check has passed, so a bad
config fails on every rank at once with an error naming the key, instead of hanging a collective;
on a GPU that includes the memory pre-flight (memory_plan.py)."""
import argparse
from typing import NamedTuple

from superrl.config import Config, ConfigError, load_config, validate_launch
from superrl.distributed import ParallelContext, init_distributed, world_size_from_env
from superrl.hf_config import ModelArch, load_arch
from superrl.trainer.memory_plan import check_memory_plan
from superrl.trainer.sinks import require_sink_packages


class Launch(NamedTuple):
    config: Config
    arch: ModelArch
    ctx: ParallelContext


def config_arguments(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with `--config FILE.yaml` and the dotted `key=value` overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file (its keys are listed in README.md)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2 optim.lr=1e-5")
    return parser


def start(args: argparse.Namespace, needs_eval_files: bool = False, logs_metrics: bool = False) -> Launch:
    """Load and check the config (`needs_eval_files`: it must name data.eval_files; `logs_metrics`:
    the packages of its trainer.loggers are installed), then create the process groups with the
    run's `trainer.dist_timeout_s`."""
    config = load_config(args.config, args.overrides)
    if needs_eval_files and not config.data.eval_files:
        raise ConfigError("data.eval_files is empty: there is nothing to evaluate")
    if logs_metrics:
        require_sink_packages(config.trainer.loggers)
    arch = load_arch(config.model.hf_dir)
    world_size = world_size_from_env()
    validate_launch(config, arch, world_size)
    check_memory_plan(config, arch, world_size)  # on a GPU: refuses a run that cannot fit, before any allocation
    ctx = init_distributed(config.parallel.tp, config.parallel.pp, config.trainer.seed,
                           timeout_s=config.trainer.dist_timeout_s)
    return Launch(config, arch, ctx)
