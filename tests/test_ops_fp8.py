"""FP8 output projection: scaled GEMM exactness, the documented log-prob error bound vs float32,
E5M2 gradient bounds, and the delayed-scaling amax history / scale updates."""
import pytest
import torch

from superrl.ops import (FP8OutputLayer, FP8Recipe, FP8Scaling, fp8_fused_linear_logprobs_and_entropy,
                         fused_linear_logprobs_and_entropy, logprobs_and_entropy)
from superrl.ops.fp8_projection import scaled_matmul
from test_ops import CHUNK, make_inputs

E4M3_MAX, E5M2_MAX = 448.0, 57344.0
E4M3_UNIT_ROUNDOFF, E5M2_UNIT_ROUNDOFF = 2.0 ** -4, 2.0 ** -3
E4M3_SUBNORMAL_ERROR, E5M2_SUBNORMAL_ERROR = 2.0 ** -10, 2.0 ** -17  # half the subnormal spacing
FLOAT32_SLACK = 1e-5  # the float32 reference's own rounding, far below the FP8 terms


def fp8_inputs(seed=0):
    inputs = make_inputs(seed, hidden=64)
    inputs["hidden"], inputs["weight"] = inputs["hidden"].float(), inputs["weight"].float() * 0.3
    return inputs


def dequantised(tensor, fp8_dtype):
    """Quantise-dequantise with the just-in-time scale fp8_max / amax (first step, margin 0)."""
    scale = torch.finfo(fp8_dtype).max / tensor.abs().max()
    return (tensor * scale).to(fp8_dtype).float() / scale


def logit_error_bound(hidden, weight):
    """docs/fp8_output_layer.md, eq. (1): per-logit bound of |z_fp8 - z| for E4M3 operands."""
    u = E4M3_UNIT_ROUNDOFF
    alpha_h = E4M3_SUBNORMAL_ERROR * hidden.abs().max() / E4M3_MAX
    alpha_w = E4M3_SUBNORMAL_ERROR * weight.abs().max() / E4M3_MAX
    return ((2 * u + u * u) * (hidden.abs() @ weight.abs().t())
            + (1 + u) * (alpha_w * hidden.abs().sum(1, keepdim=True) + alpha_h * weight.abs().sum(1))
            + hidden.shape[1] * alpha_h * alpha_w)


def test_scaled_mm_equals_dequantised_float32_matmul():
    inputs = fp8_inputs()
    hidden_fp8 = (inputs["hidden"] * 4).to(torch.float8_e4m3fn)
    weight_fp8 = (inputs["weight"] * 8).to(torch.float8_e4m3fn)
    product = scaled_matmul(hidden_fp8, torch.tensor(0.25), weight_fp8.t(), torch.tensor(0.125))
    reference = (hidden_fp8.float() * 0.25) @ (weight_fp8.float() * 0.125).t()
    torch.testing.assert_close(product, reference, rtol=1e-6, atol=1e-6)


def test_fp8_logprobs_within_documented_bound_of_float32():
    inputs = fp8_inputs()
    hidden, weight, targets = inputs["hidden"], inputs["weight"], inputs["targets"]
    fp8_logprobs, _ = fp8_fused_linear_logprobs_and_entropy(hidden, weight, targets, FP8Scaling(),
                                                            chunk_size=CHUNK)
    fp32_logprobs, _ = fused_linear_logprobs_and_entropy(hidden, weight, targets)
    bound = 2 * logit_error_bound(hidden, weight).amax(dim=1) + FLOAT32_SLACK  # eq. (2)
    error = (fp8_logprobs - fp32_logprobs).abs()
    assert torch.all(error <= bound), f"worst error/bound {float((error / bound).max()):.3f}"
    assert float(error.max()) > 0  # FP8 really ran


def test_fp8_path_is_dense_path_on_dequantised_operands():
    """Forward: exactly the float32 op on E4M3-rounded operands. Backward: the same gradients up to
    one E5M2 rounding of dlogits (eq. (3))."""
    inputs = fp8_inputs()
    targets, upstream = inputs["targets"], (inputs["grad_logprobs"].float(), inputs["grad_entropy"].float())
    hidden = inputs["hidden"].clone().requires_grad_()
    weight = inputs["weight"].clone().requires_grad_()
    fp8_out = fp8_fused_linear_logprobs_and_entropy(hidden, weight, targets, FP8Scaling(), chunk_size=CHUNK)
    ((fp8_out[0] * upstream[0]).sum() + (fp8_out[1] * upstream[1]).sum()).backward()

    hidden_q = dequantised(inputs["hidden"], torch.float8_e4m3fn)
    weight_q = dequantised(inputs["weight"], torch.float8_e4m3fn)
    logits_q = (hidden_q @ weight_q.t()).requires_grad_()
    ref_out = logprobs_and_entropy(logits_q, targets)
    ((ref_out[0] * upstream[0]).sum() + (ref_out[1] * upstream[1]).sum()).backward()
    for fp8_value, ref_value in zip(fp8_out, ref_out):
        torch.testing.assert_close(fp8_value, ref_value, rtol=0, atol=FLOAT32_SLACK)

    grad_logits = logits_q.grad
    alpha_g = E5M2_SUBNORMAL_ERROR * grad_logits.abs().max() / E5M2_MAX
    rounding = E5M2_UNIT_ROUNDOFF * grad_logits.abs() + alpha_g
    hidden_bound = rounding @ weight_q.abs() + FLOAT32_SLACK
    weight_bound = rounding.t() @ hidden_q.abs() + FLOAT32_SLACK
    assert torch.all((hidden.grad - grad_logits @ weight_q).abs() <= hidden_bound)
    assert torch.all((weight.grad - grad_logits.t() @ hidden_q).abs() <= weight_bound)


def run_fp8_step(scaling, hidden, weight, targets):
    hidden = hidden.clone().requires_grad_()
    logprobs, entropy = fp8_fused_linear_logprobs_and_entropy(hidden, weight.clone().requires_grad_(),
                                                              targets, scaling, chunk_size=CHUNK)
    (logprobs.sum() + entropy.sum()).backward()
    return logprobs.detach()


def test_amax_history_and_scales_follow_the_recipe():
    recipe = FP8Recipe(amax_history_len=3, margin=1)
    scaling = FP8Scaling(recipe)
    inputs = fp8_inputs()
    multipliers = [1.0, 4.0, 0.5, 2.0, 0.25]
    for step, multiplier in enumerate(multipliers):
        hidden = inputs["hidden"] * multiplier
        run_fp8_step(scaling, hidden, inputs["weight"], inputs["targets"])
        recorded = [float(inputs["hidden"].abs().max()) * m for m in reversed(multipliers[:step + 1])]
        expected_history = (recorded + [0.0] * 3)[:3]  # newest first, oldest dropped
        torch.testing.assert_close(scaling.input.amax_history, torch.tensor(expected_history))
        expected_scale = E4M3_MAX / max(expected_history) / 2 ** recipe.margin
        torch.testing.assert_close(scaling.input.scale, torch.tensor(expected_scale))
        assert float(scaling.weight.amax_history[0]) == pytest.approx(float(inputs["weight"].abs().max()))
        assert float(scaling.grad_output.amax_history[0]) > 0
        torch.testing.assert_close(scaling.grad_output.scale,
                                   E5M2_MAX / scaling.grad_output.amax_history.max() / 2 ** recipe.margin)


def test_scale_is_delayed_by_one_step_and_saturates():
    """Step 2 quantises a 4x larger hidden with the step-1 scale: values beyond 2**margin * amax_1
    clip at fp8_max / scale, exactly as a manual quantise-dequantise with that scale predicts."""
    inputs = fp8_inputs()
    scaling = FP8Scaling(FP8Recipe(amax_history_len=4, margin=1))
    run_fp8_step(scaling, inputs["hidden"], inputs["weight"], inputs["targets"])
    step1_scale = float(scaling.input.scale)
    bigger = inputs["hidden"] * 4
    logprobs = run_fp8_step(scaling, bigger, inputs["weight"], inputs["targets"])

    hidden_q = (bigger * step1_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() / step1_scale
    weight_scale = E4M3_MAX / float(inputs["weight"].abs().max()) / 2  # step-1 weight amax, margin 1
    weight_q = (inputs["weight"] * weight_scale).to(torch.float8_e4m3fn).float() / weight_scale
    expected, _ = logprobs_and_entropy(hidden_q @ weight_q.t(), inputs["targets"])
    torch.testing.assert_close(logprobs, expected, rtol=0, atol=FLOAT32_SLACK)
    assert float(hidden_q.abs().max()) == pytest.approx(E4M3_MAX / step1_scale)  # saturated


def test_output_layer_is_the_fused_fp8_path_on_its_own_scaling_state():
    inputs = fp8_inputs()
    hidden, weight, targets = inputs["hidden"], inputs["weight"], inputs["targets"]
    layer = FP8OutputLayer(FP8Recipe(amax_history_len=2))
    got = layer.logprobs_and_entropy(hidden, weight, targets, chunk_size=CHUNK)
    want = fp8_fused_linear_logprobs_and_entropy(hidden, weight, targets, FP8Scaling(FP8Recipe(amax_history_len=2)),
                                                 chunk_size=CHUNK)
    for got_value, want_value in zip(got, want):
        torch.testing.assert_close(got_value, want_value, rtol=0, atol=0)
    assert float(layer.scaling.input.amax_history[0]) == float(hidden.abs().max())  # recorded in the layer
    assert set(layer.state_dict()) == {f"scaling.{role}.{buffer}" for role in ("input", "weight", "grad_output")
                                       for buffer in ("amax_history", "scale")}


@pytest.mark.parametrize("kwargs, message", [({"amax_history_len": 0}, "amax_history_len"),
                                             ({"margin": -1}, "margin")])
def test_bad_recipe_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FP8Recipe(**kwargs)
