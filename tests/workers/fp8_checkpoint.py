"""Worker: the FP8 output layer's scaling state through the real checkpoint code.

--phase save (TP2): two FP8 SFT steps, a training checkpoint, a resume into a fresh FP8 model (state
and the next step's loss bitwise), a load into a model without FP8, and a no-FP8 model checkpoint
(what HF conversion writes) loaded into an FP8 model. --phase load (any TP): the saved state loads
resharded.
"""
import argparse
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from dist_harness import write_result
from sft_steps import fixed_batch
from superrl.algorithms.counts import all_reduce_sum
from superrl.config import load_config
from superrl.distributed import init_distributed
from superrl.hf_config import load_arch, read_hf_config
from superrl.trainer import checkpoint
from superrl.trainer.model_setup import build_train_state
from superrl.trainer.step import IGNORE, MicroBatch, sft_loss_fn, train_step
from superrl.weights.load import unwrap_model
from superrl.weights.megatron_checkpoint import (checkpoint_metadata, load_model_checkpoint,
                                                 save_model_checkpoint)

FP8_PREFIX = "fp8_output_layer."


def build(args, fp8: bool, load_weights: bool = True):
    config = load_config(None, [f"model.hf_dir={args.hf_dir}", f"parallel.tp={args.tp}", "optim.lr=0.01",
                                "trainer.total_steps=3", f"model.fp8_output_layer={fp8}",
                                "model.fp8_amax_history=4"])
    return build_train_state(config, load_arch(args.hf_dir), load_weights=load_weights)


def fp8_state(state) -> dict:
    return {k: v.detach().clone() for k, v in unwrap_model(state.model).state_dict().items()
            if k.startswith(FP8_PREFIX)}


def weights(state) -> dict:
    return {k: v.detach().clone() for k, v in unwrap_model(state.model).named_parameters()}


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def sft_step(state, arch) -> float:
    tokens, targets = fixed_batch(arch.vocab_size)
    count = all_reduce_sum(torch.tensor([float((targets != IGNORE).sum())]), mpu.get_data_parallel_group())
    return train_step(state, [MicroBatch(tokens, targets)], sft_loss_fn(float(count[0])))["loss"]


def same_on_every_tp_rank(state: dict) -> bool:
    flat = torch.cat([v.flatten() for v in state.values()])
    gathered = [torch.empty_like(flat) for _ in range(mpu.get_tensor_model_parallel_world_size())]
    dist.all_gather(gathered, flat, group=mpu.get_tensor_model_parallel_group())
    return all(torch.equal(g, flat) for g in gathered)


def metadata(args, state) -> dict:
    return checkpoint_metadata(state.arch, read_hf_config(args.hf_dir), args.tp, 1, state.padded_vocab)


def save_phase(args) -> dict:
    arch = load_arch(args.hf_dir)
    trained = build(args, fp8=True)
    assert sorted(b for b, _ in unwrap_model(trained.model).named_buffers() if b.startswith(FP8_PREFIX))
    for _ in range(2):
        sft_step(trained, arch)
    saved_state, saved_weights = fp8_state(trained), weights(trained)
    path = checkpoint.save_checkpoint(args.run_dir, 2, trained, {}, metadata(args, trained), args.hf_dir,
                                      keep_last=1)
    resumed = build(args, fp8=True, load_weights=False)
    checkpoint.load_checkpoint(path, resumed, arch)
    result = {"history": saved_state[FP8_PREFIX + "scaling.weight.amax_history"].tolist(),
              "tp_ranks_agree": same_on_every_tp_rank(saved_state),
              "resumed_state_equal": equal(fp8_state(resumed), saved_state),
              "next_loss_equal": sft_step(resumed, arch) == sft_step(trained, arch)}
    without_fp8 = build(args, fp8=False, load_weights=False)
    load_model_checkpoint(without_fp8.model, path, arch)
    result["no_fp8_model_loads_weights"] = equal(weights(without_fp8), saved_weights)
    result["no_fp8_model_has_no_fp8_state"] = fp8_state(without_fp8) == {}
    converted_dir = os.path.join(args.run_dir, "converted")  # as tools/convert_hf_to_megatron.py writes
    save_model_checkpoint(build(args, fp8=False).model, converted_dir, metadata(args, trained))
    fresh = build(args, fp8=True, load_weights=False)
    load_model_checkpoint(fresh.model, converted_dir, arch)
    never_loaded = build(args, fp8=True, load_weights=False)
    result["converted_loads_with_fresh_fp8_state"] = equal(fp8_state(fresh), fp8_state(never_loaded))
    result["converted_loads_weights"] = equal(weights(fresh), weights(build(args, fp8=False)))
    return result


def load_phase(args) -> dict:
    state = build(args, fp8=True, load_weights=False)
    load_model_checkpoint(state.model, os.path.join(args.run_dir, "checkpoints", "step_2"), load_arch(args.hf_dir))
    return {"history": fp8_state(state)[FP8_PREFIX + "scaling.weight.amax_history"].tolist()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--phase", choices=["save", "load"], required=True)
    args = p.parse_args()
    init_distributed(args.tp, 1, seed=0)
    write_result(save_phase(args) if args.phase == "save" else load_phase(args))


if __name__ == "__main__":
    main()
