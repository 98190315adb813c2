"""The FP8 output layer on CUDA: torch._scaled_mm is then the cuBLASLt FP8 GEMM (compute capability
8.9+: Ada, Hopper, Blackwell). The reference is the same op on CPU, where _scaled_mm equals the
float32 product of the dequantised operands exactly (tests/test_ops_fp8.py); FP8 products are exact
in float32, so the forwards differ only by the order of float32 sums: FP32_SUM_TOL = 1e-4 at
these sizes (|logits| <= ~20, 64-term dot products, float32 epsilon 1.2e-7). Gradients go through
one more cast, of the logits gradient to E5M2, whose input differs by that float32 noise: a few of
its 32k elements may round to the neighbouring E5M2 value (one step, 2^-2 relative), so gradients
are compared in norm: GRAD_REL_TOL = 1e-3 of ||grad||.
"""
import pytest
import torch

from superrl.ops import FP8OutputLayer, FP8Recipe

FP32_SUM_TOL = 1e-4
GRAD_REL_TOL = 1e-3
TOKENS, HIDDEN, VOCAB, CHUNK = 128, 64, 256, 32  # multiples of 16, as cuBLASLt FP8 requires
STEPS = 3  # the first step uses just-in-time scales, the later ones the delayed (recorded) scales


def fp8_capable() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


pytestmark = pytest.mark.skipif(not fp8_capable(), reason="FP8 GEMMs need a CUDA device of compute capability 8.9+")


def inputs(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    targets[[3, TOKENS - 1]] = -100
    return {"hidden": torch.randn(TOKENS, HIDDEN, generator=g) * (1 + step),
            "weight": torch.randn(VOCAB, HIDDEN, generator=g) * 0.3, "targets": targets}


def fp8_step(layer: FP8OutputLayer, data: dict, device: str) -> dict:
    hidden = data["hidden"].to(device).requires_grad_()
    weight = data["weight"].to(device).requires_grad_()
    logprobs, entropy = layer.logprobs_and_entropy(hidden, weight, data["targets"].to(device), chunk_size=CHUNK)
    (logprobs.sum() + 0.5 * entropy.sum()).backward()
    return {"logprobs": logprobs, "entropy": entropy, "grad_hidden": hidden.grad, "grad_weight": weight.grad}


def test_cublaslt_fp8_path_equals_the_dequantised_reference():
    on_gpu = FP8OutputLayer(FP8Recipe(amax_history_len=2)).to("cuda")
    on_cpu = FP8OutputLayer(FP8Recipe(amax_history_len=2))
    assert {b.device.type for b in on_gpu.buffers()} == {"cuda"}
    for step in range(STEPS):
        got, want = fp8_step(on_gpu, inputs(step), "cuda"), fp8_step(on_cpu, inputs(step), "cpu")
        for name in ("logprobs", "entropy"):
            torch.testing.assert_close(got[name].cpu(), want[name], rtol=0, atol=FP32_SUM_TOL, msg=name)
        for name in ("grad_hidden", "grad_weight"):
            error = (got[name].cpu() - want[name]).norm() / want[name].norm()
            assert error <= GRAD_REL_TOL, (step, name, float(error))
    for (name, got), (_, want) in zip(on_gpu.named_buffers(), on_cpu.named_buffers()):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=0, msg=name)  # same amaxes recorded


def test_scaling_state_follows_the_model_to_the_gpu_and_stays_float32():
    layer = FP8OutputLayer().to("cuda", torch.bfloat16)
    assert {(b.device.type, b.dtype) for b in layer.buffers()} == {("cuda", torch.float32)}
