"""FP8 output GEMM on torch._scaled_mm: a projection for the chunked fused log-prob path and a
plain `fp8_linear` for when full logits are wanted.

Forward: logits = Q4(hidden) Q4(weight)^T; backward: dhidden = Q5(dz) Q4(weight),
dweight = Q5(dz)^T Q4(hidden), with Q4/Q5 the E4M3/E5M2 delayed-scaling casts of `FP8Scaling`
and float32 accumulation. On CPU `_scaled_mm` equals the float32 product of the dequantised
operands exactly; on CUDA it is the cuBLASLt FP8 GEMM (H100+, dims multiples of 16).
"""
import torch

from superrl.ops.fp8_scaling import FP8Scaling
from superrl.ops.fused_linear import chunked_linear_logprobs_and_entropy

_ALL_ROWS = slice(None)


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

    def __init__(self, scaling: FP8Scaling):
        self.scaling = scaling

    def prepare(self, hidden, weight):
        """Quantise both operands once per step (records their amaxes); kept for the backward."""
        return (*self.scaling.input.quantize(hidden), *self.scaling.weight.quantize(weight))

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
        """The gradient's amax is the max over all chunks of this step."""
        self.scaling.grad_output.record_pending()


class _FP8Linear(torch.autograd.Function):
    """y = x @ weight.T through `FP8Projection` as a single chunk."""

    @staticmethod
    def forward(ctx, x, weight, projection):
        operands = projection.prepare(x, weight)
        ctx.save_for_backward(*operands)
        ctx.projection = projection
        ctx.x_dtype, ctx.weight_dtype = x.dtype, weight.dtype
        logits = x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)
        return projection.logits(operands, _ALL_ROWS, logits).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        operands = ctx.saved_tensors
        hidden_fp8, weight_fp8 = operands[0], operands[2]
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty(hidden_fp8.shape, dtype=ctx.x_dtype, device=grad_y.device)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros(weight_fp8.shape, dtype=torch.float32, device=grad_y.device)
        ctx.projection.backward(operands, _ALL_ROWS, grad_y, grad_x, grad_weight)
        ctx.projection.finish_backward()
        if grad_weight is not None:
            grad_weight = grad_weight.to(ctx.weight_dtype)
        return grad_x, grad_weight, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scaling: FP8Scaling) -> torch.Tensor:
    """x [..., h] @ weight[V/tp, h].T with the FP8 recipe of `scaling`; differentiable."""
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"x {tuple(x.shape)} and weight [out, in] = {tuple(weight.shape)} do not "
                         f"match in the input size")
    flat = x.reshape(-1, x.shape[-1])
    return _FP8Linear.apply(flat, weight, FP8Projection(scaling)).view(*x.shape[:-1], -1)


def fp8_fused_linear_logprobs_and_entropy(hidden, weight, targets, scaling: FP8Scaling,
                                          tp_group=None, chunk_size=None):
    """`fused_linear_logprobs_and_entropy` with the output GEMM in FP8 (see module docstring)."""
    return chunked_linear_logprobs_and_entropy(FP8Projection(scaling), hidden, weight, targets,
                                               tp_group, chunk_size)
