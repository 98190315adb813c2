"""`model.cpu_gemm`: which GEMMs the decoder's linear layers run on CPU, in training and forward-only.

megatron's local-spec ColumnParallelLinear / RowParallelLinear hand their GEMM to `_forward_impl`,
which runs `LinearWithGradAccumulationAndAsyncCommunication` on torch.matmul (MKL on CPU).
`use_cpu_gemm` points that seam of every decoder linear at `OneDNNLinear`: megatron's autograd
function step for step (the TP all-reduce of the input gradient, sequence parallelism's all-gather
and reduce-scatter, issued async in the same order; the weight gradient returned for megatron's
DDP hook to add into `main_grad`, as megatron does with gradient_accumulation_fusion off, which it
always is on CPU), with the forward and input-gradient GEMMs on oneDNN (superrl/ops/onednn.py).

Measured at SmolLM2-135M's shapes (2400 rows, docs/cpu_gemm.md): oneDNN takes 17-24% less time
than MKL for the forward and the input-gradient GEMMs at TP1 (2 threads), 5-15% at TP2 (1 thread a
rank); neither wins the weight-gradient GEMM consistently, so it stays megatron's torch.matmul.

Settings: `torch` keeps megatron's own path; `auto` uses oneDNN on CPU for float32 parameters when
the start-up probe passes (bf16 matmul already reaches oneDNN through torch), else megatron's;
`onednn` is auto that refuses to start without it. The output layer is not touched: training
computes it in the fused log-prob kernel (superrl/ops/fused_linear.py).
"""
import torch
import torch.distributed as dist
from megatron.core.parallel_state import get_global_memory_buffer
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.utils import get_tensor_model_parallel_group_if_none, prepare_input_tensors_for_wgrad_compute

from superrl.ops.onednn import OneDNNRows, bounded_linear, onednn_linear_works

# Row counts of a micro-batch (batch x width) vary from one to the next, so they are padded (or
# split) to multiples of ROW_MULTIPLE, at most ROW_CAPACITY of them per model (OneDNNRows): at most
# 32 x 8 primitives (4 weight shapes, forward and input gradient), ~170 MB at worst. 64 rows are
# < 3% of a SmolLM2 micro-batch of 8 x 300 tokens.
ROW_MULTIPLE = 64
ROW_CAPACITY = 32


def onednn_rows() -> OneDNNRows:
    return OneDNNRows(ROW_MULTIPLE, capacity=ROW_CAPACITY)


def _linear(x: torch.Tensor, weight: torch.Tensor, rows: OneDNNRows) -> torch.Tensor:
    """x [..., in] @ weight[out, in].T, any leading dims."""
    out = bounded_linear(x.reshape(-1, x.shape[-1]), weight, rows)
    return out.view(*x.shape[:-1], out.shape[-1])


def _all_gather(input_: torch.Tensor, tp_group, async_op: bool = False):
    """Sequence parallelism: the full sequence into megatron's shared buffer; (buffer, handle)."""
    shape = list(input_.shape)
    shape[0] *= tp_group.size()
    buffer = get_global_memory_buffer().get_tensor(shape, input_.dtype, "mpu")
    return buffer, dist.all_gather_into_tensor(buffer, input_, group=tp_group, async_op=async_op)


class OneDNNLinear(torch.autograd.Function):
    """megatron's LinearWithGradAccumulationAndAsyncCommunication without gradient-accumulation
    fusion and deferred weight gradients (neither exists on CPU); frozen weights get no wgrad."""

    @staticmethod
    def forward(ctx, input_, weight, bias, allreduce_dgrad, sequence_parallel, tp_group, rows):
        ctx.save_for_backward(input_, weight)
        ctx.use_bias, ctx.allreduce_dgrad, ctx.sequence_parallel = bias is not None, allreduce_dgrad, sequence_parallel
        ctx.tp_group, ctx.rows = tp_group, rows
        total_input = _all_gather(input_, tp_group)[0] if sequence_parallel else input_
        output = _linear(total_input, weight, rows)
        return output if bias is None else output + bias

    @staticmethod
    def backward(ctx, grad_output):
        input_, weight = ctx.saved_tensors
        tp_group, wgrad = ctx.tp_group, ctx.needs_input_grad[1]
        total_input, gather = input_, None
        if ctx.sequence_parallel and wgrad:  # re-gathered, not saved: sequence parallelism's memory saving
            total_input, gather = _all_gather(input_, tp_group, async_op=True)
        grad_input = _linear(grad_output, weight.t(), ctx.rows)
        if gather is not None:
            gather.wait()
        handle = sub_grad_input = None
        if ctx.allreduce_dgrad:  # overlaps the weight-gradient GEMM
            handle = dist.all_reduce(grad_input, group=tp_group, async_op=True)
        if ctx.sequence_parallel:
            sub_grad_input = torch.empty(input_.shape, dtype=input_.dtype, device=input_.device)
            handle = dist.reduce_scatter_tensor(sub_grad_input, grad_input, group=tp_group, async_op=True)
        grad_weight = grad_bias = None
        if wgrad or ctx.use_bias:
            grad_output, total_input = prepare_input_tensors_for_wgrad_compute(grad_output, total_input)
        if wgrad:
            grad_weight = grad_output.t().matmul(total_input)  # MKL: oneDNN is no faster here
        if ctx.use_bias:
            grad_bias = grad_output.sum(dim=0)
        if handle is not None:
            handle.wait()
        grad_input = sub_grad_input if ctx.sequence_parallel else grad_input
        return grad_input, grad_weight, grad_bias, None, None, None, None


class OneDNNForwardImpl:
    """A linear layer's `_forward_impl` (megatron's arguments); the layer's own for the cases
    OneDNNLinear does not cover."""

    def __init__(self, megatron_impl, rows: OneDNNRows):
        self.megatron_impl, self.rows = megatron_impl, rows

    def __call__(self, input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel,
                 grad_output_buffer=None, wgrad_deferral_limit=None, tp_group=None):
        if gradient_accumulation_fusion or grad_output_buffer is not None:
            return self.megatron_impl(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad,
                                      sequence_parallel, grad_output_buffer=grad_output_buffer,
                                      wgrad_deferral_limit=wgrad_deferral_limit, tp_group=tp_group)
        tp_group = get_tensor_model_parallel_group_if_none(tp_group)
        return OneDNNLinear.apply(input, weight, bias, allreduce_dgrad, sequence_parallel, tp_group, self.rows)


def uses_onednn(setting: str, dtype: torch.dtype, device: torch.device) -> bool:
    """Resolve `model.cpu_gemm` for parameters of `dtype` on `device`."""
    if setting == "torch":
        return False
    available = device.type == "cpu" and dtype == torch.float32 and onednn_linear_works(dtype)
    if setting == "onednn" and not available:
        raise RuntimeError(f"model.cpu_gemm=onednn but oneDNN's linear is not usable for {dtype} parameters "
                           f"on {device.type} (float32 on CPU with a torch built with oneDNN); "
                           "set model.cpu_gemm=auto or torch")
    return available


def use_cpu_gemm(model: torch.nn.Module, setting: str) -> None:
    """Route the decoder's linear layers per `model.cpu_gemm` (one OneDNNRows for the model)."""
    parameter = next(model.parameters())
    if not uses_onednn(setting, parameter.dtype, parameter.device):
        return
    rows = onednn_rows()
    for module in model.decoder.modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            module._forward_impl = OneDNNForwardImpl(module._forward_impl, rows)
