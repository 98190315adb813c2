"""`python -m superrl.eval --config FILE.yaml --checkpoint PATH [key=value ...]` (also under torchrun).

Loads a training checkpoint at this run's TP x PP, syncs it into the rollout engine and prints
greedy accuracy per data source of `data.eval_files`; writes them to
`trainer.run_dir/eval/<checkpoint name>.json`.
"""
import json
import os
import sys

from superrl import console

console.install()  # before megatron is imported: some of its warnings fire at import time
from superrl.distributed import destroy_distributed  # noqa: E402
from superrl.trainer.launch import config_arguments, start  # noqa: E402


def write_result(run_dir: str, checkpoint: str, result: dict) -> str:
    out_dir = os.path.join(run_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, os.path.basename(os.path.normpath(checkpoint)) + ".json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    return out


def main(argv=None) -> int:
    parser = config_arguments("python -m superrl.eval", __doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoints/step_N directory")
    args = parser.parse_args(argv)
    config, arch, ctx = start(args, needs_eval_files=True)
    from superrl.trainer.evaluate import evaluate_checkpoint  # after init: megatron patches in place

    result = evaluate_checkpoint(config, arch, ctx, args.checkpoint)
    if ctx.rank == 0:
        out = write_result(config.trainer.run_dir, args.checkpoint, result)
        for key, value in result.items():
            print(f"{key}={value:.4f}")
        print(f"wrote {out}")
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
