"""FP8 output GEMM on torch._scaled_mm: the projection of the chunked fused log-prob path.

Forward: logits = Q4(hidden) Q4(weight)^T; backward: dhidden = Q5(dz) Q4(weight),
dweight = Q5(dz)^T Q4(hidden), with Q4/Q5 the E4M3/E5M2 delayed-scaling casts of `FP8Scaling`
and float32 accumulation. On CPU `_scaled_mm` equals the float32 product of the dequantised
operands exactly; on CUDA it is the cuBLASLt FP8 GEMM (H100+, dims multiples of 16).

Amaxes are reduced (max) over the TP group before they are used or recorded, as TE reduces them
over its amax group: every TP rank scales its shard as the whole tensor would be scaled at TP1, so
the scaling state is the same on every TP rank (checkpointed once, reshardable to any TP).
"""
import torch
from torch.distributed import ReduceOp

from superrl.ops._tp import all_reduce_
from superrl.ops.fp8_scaling import FP8Scaling, amax_of
from superrl.ops.fused_linear import chunked_linear_logprobs_and_entropy


def _column_major(matrix: torch.Tensor) -> torch.Tensor:
    return matrix if matrix.stride(0) == 1 else matrix.t().contiguous().t()


def scaled_matmul(a_fp8, a_dequant, b_fp8, b_dequant) -> torch.Tensor:
    """(a_fp8 * a_dequant) @ (b_fp8 * b_dequant) in float32."""
    if a_fp8.is_cuda:  # cuBLASLt wants a row-major, b column-major; the CPU kernel takes any
        a_fp8, b_fp8 = a_fp8.contiguous(), _column_major(b_fp8)
    return torch._scaled_mm(a_fp8, b_fp8, scale_a=a_dequant, scale_b=b_dequant,
                            out_dtype=torch.float32)


class FP8Projection:
    """`DenseProjection`'s interface with FP8 GEMMs; the scales live in `scaling` (one per layer)."""

    def __init__(self, scaling: FP8Scaling, tp_group=None):
        self.scaling = scaling
        self.tp_group = tp_group

    def _reduce_amax(self, amax: torch.Tensor) -> torch.Tensor:
        return all_reduce_(amax, ReduceOp.MAX, self.tp_group)

    def prepare(self, hidden, weight):
        """Quantise both operands once per step (records their amaxes); kept for the backward."""
        amaxes = self._reduce_amax(torch.stack([amax_of(hidden), amax_of(weight)]))  # one collective
        return (*self.scaling.input.quantize(hidden, amaxes[0]),
                *self.scaling.weight.quantize(weight, amaxes[1]))

    def logits(self, operands, rows: slice, out: torch.Tensor) -> torch.Tensor:
        hidden_fp8, hidden_dequant, weight_fp8, weight_dequant = operands
        return out.copy_(scaled_matmul(hidden_fp8[rows], hidden_dequant, weight_fp8.t(), weight_dequant))

    def backward(self, operands, rows: slice, grad_logits, grad_hidden_rows, grad_weight) -> None:
        hidden_fp8, hidden_dequant, weight_fp8, weight_dequant = operands
        grad_fp8, grad_dequant = self.scaling.grad_output.quantize_part(grad_logits)
        if grad_hidden_rows is not None:
            grad_hidden_rows.copy_(scaled_matmul(grad_fp8, grad_dequant, weight_fp8, weight_dequant))
        if grad_weight is not None:
            grad_weight.add_(scaled_matmul(grad_fp8.t(), grad_dequant, hidden_fp8[rows],
                                           hidden_dequant))

    def finish_backward(self) -> None:
        """The gradient's amax is the max over all chunks of this step (and all TP shards)."""
        self.scaling.grad_output.record_pending(self._reduce_amax)


def fp8_fused_linear_logprobs_and_entropy(hidden, weight, targets, scaling: FP8Scaling,
                                          tp_group=None, chunk_size=None):
    """`fused_linear_logprobs_and_entropy` with the output GEMM in FP8 (see module docstring)."""
    return chunked_linear_logprobs_and_entropy(FP8Projection(scaling, tp_group), hidden, weight, targets,
                                               tp_group, chunk_size)
