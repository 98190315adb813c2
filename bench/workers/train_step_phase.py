"""Worker of bench/train_step.py (under torchrun, gloo): the real Trainer's train phase
(`Trainer._update_actor`: advantages, the switch, packing, the actor update with its optimizer
step) on the bench's synthetic rows, per scenario, timed on every rank. Each rank writes its result
as JSON to RESULT_DIR/rank<RANK>.json.

The rows are synthetic (bench/train_step.py, `scenario`): the engine's log-probs are unknown, so the
parity guard's tolerance is lifted; it still runs (its cost is part of the phase).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/
from train_step import scenario  # noqa: E402

from superrl.config import load_config, validate_launch  # noqa: E402
from superrl.distributed import destroy_distributed, init_distributed, world_size_from_env  # noqa: E402
from superrl.hf_config import load_arch  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--result-dir", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--scenarios", nargs="+", required=True)
    p.add_argument("--prompts", type=int, required=True)
    p.add_argument("--repeats", type=int, required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    config = load_config(args.config, args.overrides)
    arch = load_arch(config.model.hf_dir)
    validate_launch(config, arch, world_size_from_env())
    ctx = init_distributed(config.parallel.tp, config.parallel.pp, config.trainer.seed)
    from superrl.trainer.loop import Trainer  # after init: megatron patches are in place

    trainer = Trainer(config, arch, ctx)
    vocab = min(arch.vocab_size, len(trainer.tokenizer))
    result = {"threads": torch.get_num_threads(), "scenarios": {}}
    for name in args.scenarios:
        examples, rollouts = scenario(name, args.prompts, config.rollout.n, config.rollout.max_tokens, vocab,
                                      trainer.tokenizer.eos_token_id)
        seconds, decisions = [], []
        for _ in range(args.repeats + 1):  # the first call warms up: not timed
            start = time.perf_counter()
            metrics, decision, _ = trainer._update_actor(examples, rollouts)
            seconds.append(time.perf_counter() - start)
            decisions.append(decision.gates.tolist())
        result["scenarios"][name] = {"seconds": seconds[1:], "warmup_s": seconds[0], "gates": decisions[-1],
                                     "same_gates_every_call": all(d == decisions[0] for d in decisions),
                                     "metrics": {k: float(v) for k, v in metrics.items()
                                                 if isinstance(v, (int, float))}}
    trainer.close()
    Path(args.result_dir, f"rank{ctx.rank}.json").write_text(json.dumps(result))
    destroy_distributed()


if __name__ == "__main__":
    main()
