"""Worker: the trainer and tools on a fake GPU in a world that poses as NCCL (tests/fake_gpu.py,
tests/collective_guard.py); one process. Each check runs the real code and records "ok" or the
error it raised, so one launch serves every test of tests/test_device_rule.py.

The model is built and loaded as on the host, then placed on the fake GPU before anything runs on
it (a real GPU run builds it there): what is checked is every tensor the step, the loss, the
switch, the metrics, the weight sync and compare_logits create from then on, and every collective.
"""
import argparse
import contextlib
import sys
import traceback

import torch

from dist_harness import REPO_ROOT, write_result

sys.path.insert(0, str(REPO_ROOT / "tools"))

import compare_logits  # noqa: E402
from collective_guard import nccl_world  # noqa: E402
from fake_gpu import GPU, FakeGpu, host_data, host_then_device, on_fake_gpu, to_fake_gpu  # noqa: E402
from superrl.config import load_config  # noqa: E402
from superrl.distributed import init_distributed, seed_everything  # noqa: E402
from superrl.hf_config import load_arch  # noqa: E402
from superrl.models.gpt import build_policy_model  # noqa: E402
from superrl.trainer import model_setup  # noqa: E402
from superrl.trainer.loop import Trainer  # noqa: E402
from superrl.trainer.preemption import PreemptionWatch  # noqa: E402
from superrl.weights.megatron_checkpoint import load_model_checkpoint  # noqa: E402

def place_on_fake_gpu(model):
    model._apply(to_fake_gpu)
    # RoPE keeps its frequencies in a plain attribute, made where the model is built.
    for module in model.modules():
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            module.inv_freq = to_fake_gpu(module.inv_freq)
    return model


def built_on_fake_gpu(build):
    def build_there(*args, **kwargs):
        return place_on_fake_gpu(build(*args, **kwargs))
    return build_there


@contextlib.contextmanager
def fake_gpu_run():
    """Megatron's own "cuda" allocations (redirected to the host by megatron_patches) go to the fake
    GPU too, as they go to the GPU on a cluster; collectives are checked."""
    from megatron_patches import cuda_redirect
    from megatron_patches.cuda_redirect import TORCH_ON_CPU

    saved = cuda_redirect.CPU, TORCH_ON_CPU.tensor, TORCH_ON_CPU.as_tensor
    cuda_redirect.CPU = GPU
    TORCH_ON_CPU.tensor, TORCH_ON_CPU.as_tensor = (cuda_redirect._redirect_factory(host_then_device(make))
                                                   for make in (torch.tensor, torch.as_tensor))
    fresh_scratch_buffers()
    try:
        with FakeGpu(), nccl_world(on_fake_gpu, host_data):
            yield
    finally:
        cuda_redirect.CPU, TORCH_ON_CPU.tensor, TORCH_ON_CPU.as_tensor = saved
        fresh_scratch_buffers()


def fresh_scratch_buffers() -> None:
    """Megatron keeps scratch buffers across calls on the one device a real run has; a run on the
    host and one on the fake GPU in the same process must not share them."""
    from megatron.core import parallel_state as mpu

    mpu.destroy_global_memory_buffer()
    mpu._set_global_memory_buffer()


def check(name: str, fn, results: dict) -> None:
    try:
        with fake_gpu_run():
            fn()
        results[name] = "ok"
    except Exception as err:  # recorded for the test to assert on, with where it was raised
        results[name] = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"


def first_train_step(config, arch, ctx, out: dict, device: torch.device) -> None:
    """The first step of a fresh Trainer, whose model is on `device`; its metrics go to `out`."""
    seed_everything(config.trainer.seed)  # both runs start from the same RNG state
    trainer = Trainer(config, arch, ctx)
    assert next(trainer.state.model.parameters()).device == device
    trainer.preemption = PreemptionWatch(config.trainer.preemption_grace_s)  # as run() has it
    try:
        out.update(trainer.train_step())
    finally:
        trainer.preemption.close()
        trainer.close()


def loaded_checkpoint(megatron_dir: str, arch):
    """compare_logits' model, loaded on the host (torch's checkpoint loader takes tensors on the
    meta device for placeholders, so it cannot load onto the fake GPU)."""
    model = build_policy_model(arch, 1, 1, arch.padded_vocab_size(128))
    load_model_checkpoint(model, megatron_dir, arch)
    return model.eval()


def compare_logits_on_fake_gpu(model, arch, tokens: torch.Tensor, hf_logits: torch.Tensor) -> None:
    logits = compare_logits.shared_logits(model, arch, tokens)
    diff = (logits - hf_logits).abs().max().item()
    assert diff < 1e-4, f"max_abs_diff={diff} against the HF model"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--megatron-dir", required=True)
    args, overrides = p.parse_known_args()
    config = load_config(args.config, overrides)
    arch = load_arch(config.model.hf_dir)
    ctx = init_distributed(1, 1, seed=config.trainer.seed)
    results, host_metrics, metrics = {}, {}, {}
    first_train_step(config, arch, ctx, host_metrics, torch.device("cpu"))  # the reference
    model = place_on_fake_gpu(loaded_checkpoint(args.megatron_dir, arch))
    tokens = compare_logits.random_tokens(arch.vocab_size, 2, 8, seed=0)
    hf_logits = compare_logits.hf_logits(config.model.hf_dir, tokens)  # the host reference
    check("compare_logits", lambda: compare_logits_on_fake_gpu(model, arch, tokens, hf_logits), results)
    model_setup.build_policy_model = built_on_fake_gpu(model_setup.build_policy_model)  # policy and reference
    check("train_step", lambda: first_train_step(config, arch, ctx, metrics, GPU), results)
    write_result({"results": results, "metrics": metrics, "host_metrics": host_metrics})


if __name__ == "__main__":
    main()
