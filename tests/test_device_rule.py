"""One device rule, checked without a GPU: every tensor a step, a tool or a sync creates lives on
the model's device, and every collective runs on tensors of its group's backend device.

The trainer's first step (rollout, advantages, the switch, old- and reference-log-prob recompute,
the hybrid loss with the entropy weighting and the KL term, the optimizer step, the metrics and
the weight sync into the engine) and compare_logits run with the model on a fake GPU
(tests/fake_gpu.py: CUDA's device-mismatch errors, real values) in a gloo world posing as NCCL
(tests/collective_guard.py: a CPU tensor handed to a collective fails). The fake-GPU step must
also reproduce the same step on the host, so the fake device cannot hide a wrong result.
"""
import pytest
import torch
import torch.distributed as dist

from collective_guard import CollectiveDeviceError, nccl_world
from dist_harness import run_torchrun
from fake_gpu import GPU, FakeGpu, host_data, on_fake_gpu
from trainer_runs import TIMINGS, write_config
import convert_hf_to_megatron

DEVICE_FREE = TIMINGS + ("sync/", "memory/")  # the transports differ (host: direct, GPU: collective)


@pytest.fixture(scope="module")
def device_rule_run(tmp_path_factory, tiny_llama, arith_files):
    d = tmp_path_factory.mktemp("device_rule")
    config = write_config(d / "c.yaml", tiny_llama, arith_files, d / "run", steps=1)
    assert convert_hf_to_megatron.main(["--hf-dir", tiny_llama, "--out-dir", str(d / "megatron"),
                                        "--tp", "1", "--pp", "1"]) in (0, None)
    [result] = run_torchrun("device_rule.py", 1, ["--config", config, "--megatron-dir", d / "megatron",
                                                  "algorithm.kl_coef=0.05", "algorithm.hybrid.weighting=entropy"])
    return result


def test_fake_gpu_raises_cudas_device_mismatch():
    with FakeGpu():
        x = torch.ones(2, 3, device="cuda")
        assert x.device == GPU and (x * 2).sum().item() == 12.0
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            x + torch.ones(2, 3)
        assert (x + torch.tensor(1.0)).tolist() == [[2.0] * 3] * 2  # a CPU scalar is fine, as on CUDA


def test_collective_guard_refuses_host_tensors_on_an_nccl_group():
    with FakeGpu(), nccl_world(on_fake_gpu, host_data):
        with pytest.raises(CollectiveDeviceError, match="NCCL only communicates tensors on the GPU"):
            dist.all_reduce(torch.ones(2))


def test_train_step_on_fake_gpu(device_rule_run):
    assert device_rule_run["results"]["train_step"] == "ok"


def test_train_step_on_fake_gpu_reproduces_the_host_step(device_rule_run):
    got, want = device_rule_run["metrics"], device_rule_run["host_metrics"]
    compared = {k: v for k, v in want.items() if not k.startswith(DEVICE_FREE)}
    assert set(compared) <= set(got) and compared["switch/sft_fraction"] > 0  # PG and SFT rows both ran
    for key, value in compared.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_compare_logits_on_fake_gpu(device_rule_run):
    assert device_rule_run["results"]["compare_logits"] == "ok"
