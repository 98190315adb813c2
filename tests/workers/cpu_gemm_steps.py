"""Worker: SFT steps with model.cpu_gemm=torch and =onednn, at the world's TP without and with
sequence parallelism; per layout and setting: the losses, the row counts oneDNN ran, and (onednn)
each parameter's first-step gradient's distance from torch's, relative to its norm."""
import argparse

import torch
from megatron.core import parallel_state as mpu

from dist_harness import write_result
from sft_steps import fixed_batch
from superrl.algorithms.counts import all_reduce_sum
from superrl.config import load_config
from superrl.distributed import init_distributed, world_size_from_env
from superrl.hf_config import load_arch
from superrl.models.cpu_gemm import OneDNNForwardImpl
from superrl.trainer.model_setup import build_train_state
from superrl.trainer.step import IGNORE, MicroBatch, accumulate_gradients, apply_gradients, sft_loss_fn, train_step


def micro_batches(vocab: int) -> list:
    """Row counts 2 x 260 (off ROW_MULTIPLE: padded to 576 or split at 512) and 2 x 64 (a multiple)."""
    wide, narrow = fixed_batch(vocab, 4, 260), fixed_batch(vocab, 2, 64, seed=7)
    return [MicroBatch(t[i:i + 2], g[i:i + 2]) for t, g in (wide, narrow) for i in range(0, t.shape[0], 2)]


def run(config, arch, mbs, steps: int) -> dict:
    state = build_train_state(config, arch)
    tokens = sum(float((mb.targets != IGNORE).sum()) for mb in mbs)
    loss_fn = sft_loss_fn(float(all_reduce_sum(torch.tensor([tokens]), mpu.get_data_parallel_group())[0]))
    metrics = accumulate_gradients(state, mbs, loss_fn)
    grads = {name: p.main_grad.detach().clone() for name, p in state.model.named_parameters()}
    losses = [metrics["loss"]]
    apply_gradients(state, metrics)
    losses += [train_step(state, mbs, loss_fn)["loss"] for _ in range(steps - 1)]
    impl = state.model.module.decoder.layers[0].self_attention.linear_qkv._forward_impl
    admitted = sorted(impl.rows.admitted) if isinstance(impl, OneDNNForwardImpl) else []
    return {"losses": losses, "admitted": admitted, "grads": grads}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    tp = world_size_from_env()
    init_distributed(tp, 1, seed=0)
    arch = load_arch(args.hf_dir)
    mbs = micro_batches(arch.vocab_size)
    result = {}
    for sp in (False, True):
        runs = {}
        for setting in ("torch", "onednn"):
            config = load_config(None, [f"model.hf_dir={args.hf_dir}", f"parallel.tp={tp}", "optim.lr=0.01",
                                        f"parallel.sequence_parallel={sp}", f"model.cpu_gemm={setting}",
                                        f"trainer.total_steps={args.steps}"])
            runs[setting] = run(config, arch, mbs, args.steps)
        reference = runs["torch"].pop("grads")
        runs["onednn"]["grad_rel_diff"] = {
            name: float((g - reference[name]).norm() / reference[name].norm().clamp_min(1e-30))
            for name, g in runs["onednn"].pop("grads").items()}
        result[f"tp{tp}" + ("_sp" if sp else "")] = runs
    write_result(result)


if __name__ == "__main__":
    main()
