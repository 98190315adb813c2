"""Worker of bench/memory_plan.py: one rank's resident high-water mark (VmHWM) for

* `train --config FILE [key=value ...]`: a whole `python -m superrl.train` run, in this process;
* `baseline --config FILE [key=value ...]`: the same process without a model: every import the
  trainer makes, the process groups, tokenizer, dataset, metrics writers and reward workers, but
  no model, optimizer or engine -- the runtime a CPU process carries besides what the plan counts.

Writes {"rank", "vmhwm_bytes"} to RESULT_DIR/rank{RANK}.json (plain python or under torchrun); a
training run adds "before_save_vmhwm_bytes", the mark when it starts its first checkpoint save.

  python bench/workers/peak_rss.py --result-dir DIR {train,baseline} --config FILE [key=value ...]
"""
import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for process_memory

from process_memory import resident_bytes  # noqa: E402


def run_training(argv: list) -> dict:
    """The run's high-water mark when it first saves a checkpoint (start-up and every step: what
    the plan describes), and at its end (the checkpoint save included)."""
    from superrl.train import main
    from superrl.trainer.loop import Trainer

    marks, save = {}, Trainer.save

    def mark_then_save(trainer):
        marks.setdefault("before_save_vmhwm_bytes", resident_bytes("VmHWM"))
        return save(trainer)

    Trainer.save = mark_then_save
    rc = main(argv)
    if rc:
        raise SystemExit(f"superrl.train exited {rc}")
    return marks


def run_baseline(argv: list) -> dict:
    """What Trainer.__init__ and the loop set up besides the model, the optimizer and the engine."""
    from transformers import AutoTokenizer

    from superrl.distributed import destroy_distributed
    from superrl.train import setup
    from superrl.trainer.loop import Trainer  # noqa: F401  (imports megatron's model code, as the run does)

    config, arch, ctx = setup(argv)
    from superrl.rewards.scorer import RewardScorer
    from superrl.trainer.example_data import load_examples
    from superrl.trainer.metrics import MetricsLogger

    tokenizer = AutoTokenizer.from_pretrained(config.model.hf_dir)
    examples = load_examples(config, config.data.train_files, tokenizer, arch).example_set
    baseline = dataclasses.replace(config.trainer, run_dir=os.path.join(config.trainer.run_dir, "baseline"))
    logger = MetricsLogger(dataclasses.replace(config, trainer=baseline), enabled=ctx.rank == 0)
    with RewardScorer(examples.data_sources, config.reward.function, timeout_s=config.reward.timeout_s):
        pass
    logger.close()
    destroy_distributed()
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result-dir", required=True)
    parser.add_argument("mode", choices=("train", "baseline"))
    args, argv = parser.parse_known_args()
    marks = (run_training if args.mode == "train" else run_baseline)(argv)
    rank = int(os.environ.get("RANK", "0"))
    Path(args.result_dir, f"rank{rank}.json").write_text(
        json.dumps({"rank": rank, "vmhwm_bytes": resident_bytes("VmHWM"), **marks}))


if __name__ == "__main__":
    main()
