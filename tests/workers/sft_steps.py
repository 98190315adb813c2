"""Worker: N SFT steps (DistributedOptimizer AdamW) on a fixed global batch; reports per-step losses."""
import argparse

import torch

from dist_harness import write_result
from superrl.config import load_config, validate_parallelism
from superrl.distributed import init_distributed, world_size_from_env
from superrl.hf_config import load_arch
from superrl.trainer.model_setup import build_train_state
from superrl.algorithms.counts import all_reduce_sum
from superrl.trainer.step import IGNORE, MicroBatch, sft_loss_fn, train_step


def fixed_batch(vocab: int, n_seqs: int = 8, seq_len: int = 16, seed: int = 1234):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n_seqs, seq_len), generator=g)
    targets = torch.roll(tokens, -1, dims=1)
    lengths = torch.randint(seq_len // 2, seq_len, (n_seqs,), generator=g)
    for i, n in enumerate(lengths.tolist()):  # ragged sequences: different token counts per rank
        targets[i, n - 1:] = IGNORE
    return tokens, targets


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--fp8-output-layer", action="store_true")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--set", nargs="*", default=[], help="more config overrides, key=value")
    args = p.parse_args()
    config = load_config(None, [f"model.hf_dir={args.hf_dir}", f"parallel.tp={args.tp}",
                                f"parallel.pp={args.pp}", "optim.lr=0.01", f"trainer.total_steps={args.steps}",
                                f"model.fp8_output_layer={args.fp8_output_layer}",
                                f"model.dtype={args.dtype}", *args.set])
    arch = load_arch(args.hf_dir)
    validate_parallelism(config, arch, world_size_from_env())
    ctx = init_distributed(args.tp, args.pp, seed=0)
    state = build_train_state(config, arch)
    tokens, targets = fixed_batch(arch.vocab_size)
    per_dp = tokens.shape[0] // ctx.dp_size
    rows = slice(ctx.dp_rank * per_dp, (ctx.dp_rank + 1) * per_dp)
    tokens, targets = tokens[rows], targets[rows]
    mbs = [MicroBatch(tokens[i:i + args.micro_batch], targets[i:i + args.micro_batch])
           for i in range(0, per_dp, args.micro_batch)]
    from megatron.core import parallel_state as mpu
    global_tokens = float(all_reduce_sum(torch.tensor([float((targets != IGNORE).sum())]),
                                         mpu.get_data_parallel_group())[0])
    losses = []
    for _ in range(args.steps):
        metrics = train_step(state, mbs, sft_loss_fn(global_tokens))
        losses.append(metrics["loss"])
    write_result({"losses": losses, "tokens": metrics["tokens"], "dp": ctx.dp_size,
                  "model_dtypes": sorted({str(p.dtype) for p in state.model.parameters()}),
                  "main_param_dtypes": sorted({str(p.dtype) for group in state.optimizer.param_groups
                                               for p in group["params"]}),
                  "switches": {"sequence_parallel": state.model.config.sequence_parallel,
                               "recompute_granularity": state.model.config.recompute_granularity,
                               "overlap_grad_reduce": state.model.ddp_config.overlap_grad_reduce}})


if __name__ == "__main__":
    main()
