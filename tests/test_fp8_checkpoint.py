"""The FP8 output layer's scaling state is part of the model: it follows `.to()` (device, never
dtype), is the same on every TP rank, and is saved and restored by the real checkpoint code."""
import torch

from dist_harness import run_torchrun
from superrl.ops import FP8OutputLayer, FP8Recipe
from test_ops import CHUNK
from test_ops_fp8 import fp8_inputs

BUFFERS = {f"scaling.{role}.{name}" for role in ("input", "weight", "grad_output")
           for name in ("amax_history", "scale")}


def trained_layer() -> FP8OutputLayer:
    layer = FP8OutputLayer(FP8Recipe(amax_history_len=3))
    inputs = fp8_inputs()
    hidden = inputs["hidden"].requires_grad_()
    logprobs, _ = layer.logprobs_and_entropy(hidden, inputs["weight"], inputs["targets"], chunk_size=CHUNK)
    logprobs.sum().backward()
    return layer


def test_scaling_state_moves_with_the_module():
    layer = trained_layer()
    assert {name for name, _ in layer.named_buffers()} == BUFFERS
    layer.to("meta")
    assert {buffer.device.type for buffer in layer.buffers()} == {"meta"}


def test_scaling_state_stays_float32_when_the_model_is_cast():
    """Float16Module casts the whole model; a bf16 amax history would round every later scale."""
    layer = trained_layer()
    before = {name: buffer.clone() for name, buffer in layer.named_buffers()}
    layer.to(torch.bfloat16).half()
    for name, buffer in layer.named_buffers():
        assert buffer.dtype == torch.float32, name
        assert torch.equal(buffer, before[name]), name


def test_fp8_state_checkpoint_round_trip_at_tp2_and_resharded_to_tp1(tiny_llama, tmp_path):
    """Saved at TP2 by the trainer's checkpoint code, the amax histories come back bitwise (and
    the next step's loss too); they reshard to TP1; the model-only paths mix FP8 and non-FP8."""
    args = ["--hf-dir", tiny_llama, "--run-dir", tmp_path]
    saved = run_torchrun("fp8_checkpoint.py", 2, [*args, "--tp", "2", "--phase", "save"])
    for rank in saved:
        assert any(rank["history"]) and rank["tp_ranks_agree"]
        assert rank["resumed_state_equal"] and rank["next_loss_equal"]
        assert rank["no_fp8_model_loads_weights"] and rank["no_fp8_model_has_no_fp8_state"]
        assert rank["converted_loads_with_fresh_fp8_state"] and rank["converted_loads_weights"]
    (resharded,) = run_torchrun("fp8_checkpoint.py", 1, [*args, "--phase", "load"])
    assert resharded["history"] == saved[0]["history"]
