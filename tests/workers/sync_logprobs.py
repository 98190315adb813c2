"""Worker: SFT steps, then WeightSync into an EmbeddedEngine; the engine's log-probs must equal the
trainer's on the same sequences. Once per transport (collective, then shared memory), with more
SFT steps in between so each sync has something new to deliver. Several layouts run one after the
other in one torchrun world (megatron re-initialised for each): process start-up is most of a
launch's cost here.

The owner (tp_rank 0, pp_rank 0 of each DP replica) greedily generates from fixed prompts and gets the
engine's log-prob of every generated token; all ranks then score prompt + generation with the
trainer (megatron forward through the fused kernel) and the last stage compares. Generating once
before the sync too shows the engine really was stale (the check is not vacuous).
"""
import argparse

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from dist_harness import write_result
from sft_steps import fixed_batch
from superrl.config import load_config, validate_parallelism
from superrl.distributed import init_distributed, world_size_from_env
from superrl.hf_config import load_arch
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
    """The owner's object on every rank of its replica (the TP x PP group)."""
    group = mpu.get_model_parallel_group()
    box = [obj]
    dist.broadcast_object_list(box, src=min(dist.get_process_group_ranks(group)), group=group)
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


def check_layout(hf_dir: str, tp: int, pp: int, steps: int, bucket_mb: float) -> dict:
    config = load_config(None, [f"model.hf_dir={hf_dir}", f"parallel.tp={tp}", f"parallel.pp={pp}",
                                "optim.lr=0.01", f"trainer.total_steps={2 * steps}"])
    arch = load_arch(hf_dir)
    validate_parallelism(config, arch, world_size_from_env())
    ctx = init_distributed(tp, pp, seed=0)
    state = build_train_state(config, arch)
    tokens, targets = fixed_batch(arch.vocab_size)
    loss_fn = sft_loss_fn(float((targets != IGNORE).sum()))
    engine = EmbeddedEngine(hf_dir) if ctx.tp_rank == 0 and ctx.pp_rank == 0 else None
    result = {"layout": f"tp{tp}pp{pp}", "dp": ctx.dp_size, "is_last_stage": ctx.pp_rank == ctx.pp_size - 1}
    for transport in ("collective", "shared_memory", "direct"):
        for _ in range(steps):  # the trainer's weights now differ from what the engine holds
            train_step(state, [MicroBatch(tokens, targets)], loss_fn)
        sync = WeightSync(state.model, arch, engine, bucket_mb=bucket_mb, transport=transport)
        stale_diff = max_diff(state.model, engine and engine_generations(engine, arch.vocab_size))
        stats = sync.sync()
        synced_diff = max_diff(state.model, engine and engine_generations(engine, arch.vocab_size))
        result[transport] = {"stale_diff": stale_diff, "synced_diff": synced_diff, "buckets": stats.buckets,
                             "solo_buckets": sum(len(b.slots) == 1 for b in sync.plan)}
    mpu.destroy_model_parallel()  # the next layout re-initialises megatron in the same world
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layout", action="append", required=True, help="HF_DIR:TP:PP (the rest of the world is DP)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--bucket-mb", type=float, default=0.0625)
    args = p.parse_args()
    results = []
    for layout in args.layout:
        hf_dir, tp, pp = layout.rsplit(":", 2)
        results.append(check_layout(hf_dir, int(tp), int(pp), args.steps, args.bucket_mb))
    write_result(results)


if __name__ == "__main__":
    main()
