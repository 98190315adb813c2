"""Worker: a one-step run of the real trainer (rollout, rewards, switch, hybrid loss over rollout
and expert rows, optimizer step, weight sync; trainer.total_steps=1) twice from the same start: rows in fixed-size
micro-batches, then packed under the config's optim.max_tokens_per_micro_batch. Reports both
steps' metrics, the largest weight difference after them on this rank, and the micro-batches each
run built ([rows, packed width or null], and the row kinds).

  worker --config FILE optim.max_tokens_per_micro_batch=N [key=value ...]   (under torchrun)
"""
import dataclasses
import sys

import torch

from dist_harness import write_result
from superrl.distributed import destroy_distributed, seed_everything
from superrl.train import setup
from superrl.trainer import batching
from superrl.weights.load import unwrap_model

VARYING = ("timing/", "perf/", "memory/", "sync/gbps", "sync/seconds")  # wall-clock figures


def record_micro_batches(built: list):
    """Record what the trainer's packer builds (it observes, changes nothing)."""
    pack = batching.pack_micro_batches

    def packer(*args, **kwargs):
        micro_batches = pack(*args, **kwargs)
        built.extend({"rows": mb.tokens.shape[0], "width": mb.packing.width if mb.packing else None,
                      "kinds": mb.row_kind.tolist()} for mb in micro_batches)
        return micro_batches
    batching.pack_micro_batches = packer
    return pack


def one_step(config, arch, ctx) -> tuple:
    """(metrics, parameters after, largest parameter change, micro-batches) of the first step of a
    fresh trainer on `config`."""
    from superrl.trainer.loop import Trainer

    seed_everything(config.trainer.seed)
    built = []
    original = record_micro_batches(built)
    trainer = Trainer(config, arch, ctx)
    try:
        before = parameters(trainer)
        metrics = trainer.run()[0]
        after = parameters(trainer)
    finally:
        trainer.close()
        batching.pack_micro_batches = original
    change = max(float((after[n] - before[n]).abs().max()) for n in after)
    return {k: v for k, v in metrics.items() if not k.startswith(VARYING)}, after, change, built


def parameters(trainer) -> dict:
    return {name: p.detach().clone() for name, p in unwrap_model(trainer.state.model).named_parameters()}


def main() -> None:
    config, arch, ctx = setup(sys.argv[1:])
    optim, trainer = config.optim, config.trainer
    unpacked = dataclasses.replace(config, optim=dataclasses.replace(optim, max_tokens_per_micro_batch=None),
                                   trainer=dataclasses.replace(trainer, run_dir=f"{trainer.run_dir}/unpacked"))
    packed = dataclasses.replace(config, trainer=dataclasses.replace(trainer, run_dir=f"{trainer.run_dir}/packed"))
    metrics_u, params_u, change, built_u = one_step(unpacked, arch, ctx)
    metrics_p, params_p, _, built_p = one_step(packed, arch, ctx)
    weight_diff = max(float((params_u[n] - params_p[n]).abs().max()) for n in params_u)
    write_result({"unpacked": metrics_u, "packed": metrics_p, "weight_diff": weight_diff, "weight_change": change,
                  "micro_batches": {"unpacked": built_u, "packed": built_p}})
    destroy_distributed()


if __name__ == "__main__":
    main()
