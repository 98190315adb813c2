"""Worker: SFT steps, then WeightSync into an EmbeddedEngine; the engine's log-probs must equal the
trainer's on the same sequences.

The owner (tp_rank 0, pp_rank 0 = global rank 0) greedily generates from fixed prompts and gets the
engine's log-prob of every generated token; all ranks then score prompt + generation with the
trainer (megatron forward through the fused kernel) and the last stage compares. Generating once
before the sync too shows the engine really was stale (the check is not vacuous).
"""
import argparse

import torch
import torch.distributed as dist

from dist_harness import write_result
from sft_steps import fixed_batch
from superrl.config import load_config, validate_parallelism
from superrl.distributed import init_distributed, world_size_from_env
from superrl.models.architecture import load_arch
from superrl.rollout import EmbeddedEngine, SamplingParams
from superrl.sync import WeightSync
from superrl.trainer.model_setup import build_train_state
from superrl.trainer.step import IGNORE, MicroBatch, forward_backward, sft_loss_fn, train_step

PROMPT_LEN, GEN_LEN, NUM_PROMPTS = 6, 10, 4


def engine_generations(engine, vocab: int) -> tuple:
    """(token sequences prompt + generation, engine log-probs of the generated tokens)."""
    g = torch.Generator().manual_seed(7)
    prompts = torch.randint(0, vocab, (NUM_PROMPTS, PROMPT_LEN), generator=g).tolist()
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=GEN_LEN), ignore_eos=True)
    return [p + o[0].token_ids for p, o in zip(prompts, outs)], [o[0].logprobs for o in outs]


def share_from_owner(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def trainer_logprobs(model, sequences: list):
    """Trainer log-probs of the generated tokens [NUM_PROMPTS, GEN_LEN] (last stage; None elsewhere)."""
    tokens = torch.tensor(sequences)
    targets = torch.roll(tokens, -1, dims=1)
    targets[:, -1] = IGNORE
    recorded = []

    def record(logprobs, entropy, mb):
        recorded.append(logprobs.detach())
        return logprobs.sum() * 0, {}

    forward_backward(model, [MicroBatch(tokens, targets)], record, forward_only=True)
    # Position j scores token j + 1: generated tokens sit at PROMPT_LEN .. PROMPT_LEN + GEN_LEN - 1.
    return recorded[0][:, PROMPT_LEN - 1:PROMPT_LEN - 1 + GEN_LEN] if recorded else None


def max_diff(model, generations) -> float:
    sequences, engine_lp = share_from_owner(generations)
    trainer_lp = trainer_logprobs(model, sequences)
    return None if trainer_lp is None else (trainer_lp.double() - torch.tensor(engine_lp)).abs().max().item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--bucket-mb", type=float, default=0.0625)
    args = p.parse_args()
    config = load_config(None, [f"model.hf_dir={args.hf_dir}", f"parallel.tp={args.tp}", f"parallel.pp={args.pp}",
                                "optim.lr=0.01", f"trainer.total_steps={args.steps}"])
    arch = load_arch(args.hf_dir)
    validate_parallelism(config, arch, world_size_from_env())
    ctx = init_distributed(args.tp, args.pp, seed=0)
    state = build_train_state(config, arch)
    tokens, targets = fixed_batch(arch.vocab_size)
    loss_fn = sft_loss_fn(float((targets != IGNORE).sum()))
    for _ in range(args.steps):  # the trainer's weights now differ from the checkpoint the engine loaded
        train_step(state, [MicroBatch(tokens, targets)], loss_fn)

    engine = EmbeddedEngine(args.hf_dir) if ctx.tp_rank == 0 and ctx.pp_rank == 0 else None
    sync = WeightSync(state.model, arch, engine, bucket_mb=args.bucket_mb)
    stale_diff = max_diff(state.model, engine and engine_generations(engine, arch.vocab_size))
    stats = sync.sync()
    synced_diff = max_diff(state.model, engine and engine_generations(engine, arch.vocab_size))
    write_result({"is_last_stage": ctx.is_last_stage, "stale_diff": stale_diff, "synced_diff": synced_diff,
                  "buckets": stats.buckets, "bytes": stats.bytes,
                  "solo_buckets": sum(len(b.slots) == 1 for b in sync.plan)})


if __name__ == "__main__":
    main()
