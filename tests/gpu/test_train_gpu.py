"""Real `python -m superrl.train` steps of the tiny model on 1 GPU and on 2 GPUs at TP2, against the
float32 CPU run of the same config.

float32 on GPU: every step's metrics within 1e-4 of the CPU run, the bound the CPU suite uses for
TP2/PP2 vs TP1 (cuBLAS sums in other orders than the CPU GEMMs; torch keeps TF32 off for float32
matmuls by default). The sampler is counter-based (seed, step), so equal logits up to rounding give
the same rollouts on both devices.

bfloat16 (`model.dtype=bfloat16`, rollouts kept float32 with `rollout.dtype=float32`): step 1 starts
from the same weights and samples the same rollouts, so rewards and switch decisions are equal
exactly, and the losses and entropy differ only by bf16 rounding of the forward. Tolerance
BF16_TOL = 0.05 (absolute), derived: a bf16 operand carries relative error u = 2^-8, so a logit
z = h.W is off by at most (2u + u^2) sum_i |h_i||W_i| (docs/fp8_output_layer.md, eq. (1), with
u = 2^-8); with RMS-normalised |h_i| ~ 1 and the init std 0.02 (mean |W| ~ 0.016) at h = 64 that is
0.0078 * 64 * 0.016 = 0.008, and a log-prob moves by at most 2 max_v |dz_v| (eq. (2)): 0.016 per
token from the output layer. The two transformer layers before it round their GEMMs alike; as an
estimate (not a bound), one such term per layer plus the output layer's gives 3 x 0.016 = 0.048 <=
0.05. Token means (loss/sft, actor/entropy) average the per-token errors and sit well inside it.
Later steps are only checked to be finite: bf16 weights then differ from the fp32 run's by rounding,
which can flip sampled tokens.
"""
import math

import pytest

from gpu_harness import needs_gpus, train_on_gpus
from trainer_runs import train, write_config
from superrl.trainer.metrics import read_metrics

FP32_TOL = 1e-4
BF16_TOL = 0.05
COMPARED = ("loss/", "reward/", "switch/", "actor/")
EXACT_AT_STEP_1 = ("reward/", "switch/")  # same rollouts, same rewards, same gates


@pytest.fixture(scope="module")
def cpu_fp32_rows(tmp_path_factory, tiny_llama, arith_files) -> list:
    run_dir = tmp_path_factory.mktemp("cpu") / "run_cpu_fp32"
    train(write_config(run_dir.parent / "c.yaml", tiny_llama, arith_files, run_dir))
    return read_metrics(str(run_dir))


def gpu_rows(tmp_path, tiny_llama, arith_files, name: str, nproc: int, tp: int, *overrides) -> list:
    """The metrics of a GPU run in tmp_path/`name` (bench/gpu_smoke.sh reports step times by it)."""
    run_dir = tmp_path / name
    train_on_gpus(write_config(tmp_path / "c.yaml", tiny_llama, arith_files, run_dir), nproc,
                  f"parallel.tp={tp}", *overrides)
    rows = read_metrics(str(run_dir))
    assert all(row["timing/step_s"] > 0 for row in rows)
    return rows


def compared(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith(COMPARED) and isinstance(v, (int, float))}


LAYOUTS = [pytest.param(1, 1, id="1gpu"), pytest.param(2, 2, id="2gpu-tp2", marks=needs_gpus(2))]


@pytest.mark.parametrize("nproc,tp", LAYOUTS)
def test_fp32_steps_on_gpu_match_cpu(tmp_path, tiny_llama, arith_files, cpu_fp32_rows, nproc, tp):
    rows = gpu_rows(tmp_path, tiny_llama, arith_files, f"run_gpu_fp32_{nproc}gpu_tp{tp}", nproc, tp)
    assert [r["step"] for r in rows] == [r["step"] for r in cpu_fp32_rows]
    for got, want in zip(rows, cpu_fp32_rows):
        for key, value in compared(want).items():
            assert got[key] == pytest.approx(value, abs=FP32_TOL), (got["step"], key)


@pytest.mark.parametrize("nproc,tp", LAYOUTS)
def test_bf16_steps_on_gpu_match_cpu_fp32(tmp_path, tiny_llama, arith_files, cpu_fp32_rows, nproc, tp):
    rows = gpu_rows(tmp_path, tiny_llama, arith_files, f"run_gpu_bf16_{nproc}gpu_tp{tp}", nproc, tp,
                    "model.dtype=bfloat16", "rollout.dtype=float32")
    assert [r["step"] for r in rows] == [r["step"] for r in cpu_fp32_rows]
    first, want = rows[0], cpu_fp32_rows[0]
    for key, value in compared(want).items():
        if key.startswith(EXACT_AT_STEP_1):
            assert first[key] == value, key
        else:
            assert first[key] == pytest.approx(value, abs=BF16_TOL), key
    assert compared(first) != compared(want), "bf16 should round somewhere: did model.dtype apply?"
    for row in rows:
        assert all(math.isfinite(v) for v in compared(row).values()), row["step"]
