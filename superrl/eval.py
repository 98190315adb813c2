"""`python -m superrl.eval --config FILE.yaml --checkpoint PATH [key=value ...]` (also under torchrun).

Loads a training checkpoint at this run's TP x PP, syncs it into the rollout engine and prints
greedy accuracy per data source of `data.eval_files`; writes them to
`trainer.run_dir/eval/<checkpoint name>.json`.
"""
import argparse
import json
import os
import sys

from superrl.config import load_config, validate_context_length, validate_parallelism
from superrl.distributed import destroy_distributed, init_distributed, world_size_from_env
from superrl.hf_config import load_arch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m superrl.eval", description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="a checkpoints/step_N directory")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    config = load_config(args.config, args.overrides)
    if not config.data.eval_files:
        raise SystemExit("superrl.eval: data.eval_files is empty")
    arch = load_arch(config.model.hf_dir)
    validate_parallelism(config, arch, world_size_from_env())
    validate_context_length(config, arch)
    ctx = init_distributed(config.parallel.tp, config.parallel.pp, config.trainer.seed)
    from superrl.trainer.loop import evaluate_checkpoint  # after init: megatron patches in place

    result = evaluate_checkpoint(config, arch, ctx, args.checkpoint)
    if ctx.rank == 0:
        out_dir = os.path.join(config.trainer.run_dir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, os.path.basename(os.path.normpath(args.checkpoint)) + ".json")
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
        for key, value in result.items():
            print(f"{key}={value:.4f}")
        print(f"wrote {out}")
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
