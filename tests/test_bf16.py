"""bf16 mixed precision (`model.dtype=bfloat16`) on CPU/gloo, against the float32 runs.

Tolerance of a bf16 loss against the float32 one: one bf16 unit roundoff, u = 2^-8, relative to
the loss. bf16 keeps 8 significant bits, so every weight the optimizer copies out of the fp32 main
params, and every activation, carries a relative rounding error of at most u; the loss, an fp32
mean of fp32 log-softmax values, moves to first order by the relative error of its inputs, and
the independent roundings of many elements average rather than add. The fp32 main params keep the
updates themselves exact, so the error does not compound over the 5 steps (observed: 1.3e-3
relative at step 5 on the tiny Llama, 3.5e-5 at step 1). The same bound holds between two bf16
layouts (TP2 vs TP1: both are within u/2 of the fp32 run's loss where it matters, and their
reductions differ only in order). docs/mixed_precision.md states it for users.

compare_logits in bf16: both models end in a bf16 output GEMM, so each logit is rounded to bf16
(half an ulp) and the hidden states feeding it are rounded at every layer; the tolerance is 4 bf16
ulps of the largest logit, 4 * 2^(floor(log2 max|logit|) - 7) (observed: 1 ulp).
"""
import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dist_harness import run_torchrun
from test_convert import check_ok, run_tool
from trainer_runs import deterministic_metrics, kill_run, start_training, train, wait_until, write_config
from superrl.trainer.metrics import read_metrics
from superrl.weights.hf_safetensors import HFCheckpointReader
from superrl.weights.megatron_checkpoint import METADATA_FILE
import compare_logits

STEPS = 5
BF16_UNIT_ROUNDOFF = 2.0 ** -8
BF16 = "model.dtype=bfloat16"


def sft_run(hf_dir: str, dtype: str, nproc: int = 1, *layout) -> dict:
    return run_torchrun("sft_steps.py", nproc, ["--hf-dir", hf_dir, "--steps", STEPS, "--dtype", dtype, *layout])[0]


@pytest.fixture(scope="module")
def fp32_and_bf16_tp1(tiny_llama):
    return sft_run(tiny_llama, "float32"), sft_run(tiny_llama, "bfloat16")


def assert_within_bf16_roundoff(losses: list, reference: list) -> None:
    assert len(losses) == len(reference) == STEPS
    for step, (got, want) in enumerate(zip(losses, reference)):
        assert abs(got - want) <= BF16_UNIT_ROUNDOFF * abs(want), (step, got, want)


@pytest.mark.parametrize("nproc,layout", [(1, []), (2, ["--tp", "2"]), (2, ["--pp", "2"])], ids=["tp1", "tp2", "pp2"])
def test_bf16_adamw_steps_match_float32(tiny_llama, fp32_and_bf16_tp1, nproc, layout):
    fp32, bf16_tp1 = fp32_and_bf16_tp1
    bf16 = sft_run(tiny_llama, "bfloat16", nproc, *layout) if layout else bf16_tp1
    assert bf16["model_dtypes"] == ["torch.bfloat16"] and fp32["model_dtypes"] == ["torch.float32"]
    assert bf16["main_param_dtypes"] == ["torch.float32"]  # the optimizer updates fp32 main params
    assert bf16["losses"] != fp32["losses"]  # bf16 really ran
    assert_within_bf16_roundoff(bf16["losses"], fp32["losses"])
    assert_within_bf16_roundoff(bf16["losses"], bf16_tp1["losses"])
    assert bf16["losses"][-1] < bf16["losses"][0] - 1.0  # and learns


def test_weight_sync_casts_once_into_the_engines_dtype(tiny_llama):
    """model.dtype and rollout.dtype may differ: at TP2, every transport leaves each engine tensor
    equal, bit for bit, to the trainer's (perturbed) full tensor cast once to the engine's dtype."""
    [result, _] = run_torchrun("sync_dtypes.py", 2, ["--hf-dir", tiny_llama])
    assert len(result) == 9
    for case, synced in result.items():
        engine_dtype = case.split("/")[1]
        assert synced["engine_dtypes"] == [f"torch.{engine_dtype}"], case
        assert synced["engine_tensors"] and sorted(synced["exact"]) == synced["engine_tensors"], case


def test_bf16_kill_9_after_checkpoint_then_resume_is_bitwise(tmp_path, tiny_llama, arith_files, no_leftover_processes):
    """Checkpoints hold the fp32 main params (and the bf16 params derive from them), so a resumed
    bf16 run repeats the uninterrupted one bit for bit."""
    reference = write_config(tmp_path / "ref.yaml", tiny_llama, arith_files, tmp_path / "ref", steps=4, save_every=2)
    train(reference, 1, BF16)
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run", steps=4, save_every=2)
    proc = start_training(tmp_path, config, BF16)
    wait_until((tmp_path / "run" / "checkpoints" / "step_2" / METADATA_FILE).exists, proc, what="the step-2 checkpoint")
    kill_run(proc)
    train(config, 1, BF16, "trainer.resume=true")
    resumed, uninterrupted = read_metrics(str(tmp_path / "run")), read_metrics(str(tmp_path / "ref"))
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted] == [1, 2, 3, 4]
    for got, want in zip(resumed, uninterrupted):
        assert deterministic_metrics(got) == deterministic_metrics(want), got["step"]


@pytest.fixture(scope="module")
def bf16_hf_model(tmp_path_factory, tiny_llama) -> str:
    """The tiny Llama saved in bf16, as Qwen2.5 ships."""
    out = str(tmp_path_factory.mktemp("bf16") / "hf")
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(out)
    return out


def test_bf16_hf_checkpoint_round_trips_bit_exactly(bf16_hf_model, tmp_path):
    check_ok(run_tool("convert_hf_to_megatron.py", "--hf-dir", bf16_hf_model, "--out-dir", tmp_path / "m",
                      "--tp", 2, "--pp", 1))
    check_ok(run_tool("convert_megatron_to_hf.py", "--megatron-dir", tmp_path / "m", "--out-dir", tmp_path / "hf"))
    original, exported = HFCheckpointReader(bf16_hf_model), HFCheckpointReader(str(tmp_path / "hf"))
    assert exported.names() == original.names()
    for name in original.names():
        a, b = original(name), exported(name)
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a.view(torch.int16), b.view(torch.int16)), name


def test_compare_logits_in_bf16_within_four_ulps(bf16_hf_model, tmp_path):
    check_ok(run_tool("convert_hf_to_megatron.py", "--hf-dir", bf16_hf_model, "--out-dir", tmp_path / "m",
                      "--tp", 1, "--pp", 1))
    tokens = compare_logits.random_tokens(512, 2, 32, seed=0)  # the tool's defaults
    largest = compare_logits.hf_logits(bf16_hf_model, tokens).abs().max().item()
    atol = 4 * 2.0 ** (math.floor(math.log2(largest)) - 7)
    out = check_ok(run_tool("compare_logits.py", "--hf-dir", bf16_hf_model, "--megatron-dir", tmp_path / "m",
                            "--dtype", "bfloat16", "--atol", atol))
    diff = float(re.search(r"max_abs_diff=(\S+)", out).group(1))
    assert 0 < diff <= atol  # bf16 rounding, not an exact match: the bf16 models really ran
