"""Worker: what a real megatron model, DDP and DistributedOptimizer hold on this rank, counted from
the tensors themselves, for tests/test_memory_plan.py to hold the memory plan against:

* weights: numel x itemsize of the model's parameters; gradients: the DDP grad buffers (also the
  critic's, with algorithm.advantage=gae);
* optimizer: after one SFT step, the torch Adam state (the two moments) and the fp32 main params
  (the optimizer's own tensors, i.e. those not living in the model's param buffer);
* saved activations (first and only PP stage): the bytes of every distinct storage autograd saves
  for the backward of one micro-batch [micro_batch_size, max_prompt_len + max_tokens], parameters
  and buffers excluded.

  worker --hf-dir DIR [key=value ...]   (config overrides; under torchrun)
"""
import argparse

import torch

from dist_harness import write_result
from sft_steps import fixed_batch
from superrl.config import load_config, validate_launch
from superrl.distributed import init_distributed, world_size_from_env
from superrl.hf_config import load_arch
from superrl.trainer.model_setup import build_critic_state, build_train_state
from superrl.trainer.step import MicroBatch, sft_loss_fn, train_step


def storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def buffer_storages(model) -> set:
    """Storages of the parameters and of DDP's param / grad buffers."""
    keys = {storage_key(p) for p in model.parameters()}
    for buffer in model.buffers:
        keys.add(storage_key(buffer.grad_data))
        if buffer.param_data is not None:
            keys.add(storage_key(buffer.param_data))
    return keys


def saved_activation_bytes(model, config, arch) -> int:
    """Distinct storages autograd keeps for one micro-batch's backward (forward only, then dropped)."""
    excluded, saved = buffer_storages(model), {}

    def pack(tensor):
        if storage_key(tensor) not in excluded:
            saved[storage_key(tensor)] = tensor.untyped_storage().nbytes()
        return tensor

    rows, width = config.optim.micro_batch_size, config.data.max_prompt_len + config.rollout.max_tokens
    tokens = torch.randint(0, arch.vocab_size, (rows, width), generator=torch.Generator().manual_seed(0))
    mb = MicroBatch(tokens, torch.roll(tokens, -1, dims=1))  # the test picks a width TP divides
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = model(mb.tokens, mb.position_ids, None, labels=mb.targets)
    del outputs
    return sum(saved.values())


def optimizer_bytes(state) -> dict:
    model_storages = buffer_storages(state.model)
    optimizers = getattr(state.optimizer, "chained_optimizers", [state.optimizer])
    moments = main = 0
    for optimizer in optimizers:
        inner = optimizer.optimizer  # torch's Adam under megatron's wrapper
        for group in inner.param_groups:
            for param in group["params"]:
                if storage_key(param) not in model_storages:
                    main += param.numel() * param.element_size()
                for key in ("exp_avg", "exp_avg_sq"):
                    moment = inner.state[param][key]
                    moments += moment.numel() * moment.element_size()
    return {"main_params": main, "moments": moments}


def held_bytes(state) -> dict:
    return {"weights": sum(p.numel() * p.element_size() for p in state.model.parameters()),
            "grads": sum(b.grad_data.numel() * b.grad_data.element_size() for b in state.model.buffers)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf-dir", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(None, [f"model.hf_dir={args.hf_dir}", *args.overrides])
    arch = load_arch(args.hf_dir)
    validate_launch(config, arch, world_size_from_env())
    ctx = init_distributed(config.parallel.tp, config.parallel.pp, seed=0)
    state = build_train_state(config, arch)
    result = {"pp_rank": ctx.pp_rank, "tp_rank": ctx.tp_rank, "dp_rank": ctx.dp_rank, **held_bytes(state)}
    if config.algorithm.advantage == "gae":
        result.update({f"critic_{key}": value for key, value in held_bytes(build_critic_state(config, arch)).items()})
    if ctx.pp_size == 1:
        result["saved_activations"] = saved_activation_bytes(state.model, config, arch)
    tokens, targets = fixed_batch(arch.vocab_size, n_seqs=2 * ctx.dp_size)
    rows = slice(2 * ctx.dp_rank, 2 * ctx.dp_rank + 2)
    batch = [MicroBatch(tokens[rows], targets[rows])]
    train_step(state, batch, sft_loss_fn(float((targets != -100).sum())))
    result.update(optimizer_bytes(state))
    write_result(result)


if __name__ == "__main__":
    main()
