"""oneDNN's JIT GEMM on CPU (`torch.ops.mkldnn._linear_pointwise`, inductor's CPU linear), shared by
the rollout engine's decoder (rollout/gemm.py) and the training linear layers (models/cpu_gemm.py):
one start-up probe and one policy for which shapes may reach it.

Measured on this project's CPU box (AMD EPYC, AVX-512), fp32: half of torch's default MKL sgemm
time for decode-sized products at llama-small shapes, and 17-24% less for the forward and
input-gradient GEMMs of SmolLM2-135M's training shapes (2400 rows, docs/cpu_gemm.md; MKL takes a
slower code path on AMD).
The op is internal to torch, so `onednn_linear_works` checks it before anything relies on it.
"""
import functools
from typing import Optional

import torch

ONEDNN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# oneDNN's call costs ~8 us more than MKL's, which a product of ~2M multiply-adds earns back:
# 32 x 128 x 768 took 30 us vs MKL's 42, 32 x 128 x 256 took 18 vs 15.
ONEDNN_MIN_MACS = 2 ** 21
MAX_PAD_FRACTION = 8  # bounded_linear pads by at most n / 8 rows: oneDNN saves 15-25%


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [rows, in] @ weight[out, in].T (+ bias); `weight` may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_linear_plus(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """residual + x @ weight.T, the add fused into the GEMM."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, None, "add")


@functools.lru_cache(maxsize=None)
def onednn_linear_works(dtype: torch.dtype) -> bool:
    """The internal op exists and agrees with torch.mm: plain, with the fused add, and on a
    transposed weight view (how the training backward multiplies by W instead of W.T)."""
    if dtype not in ONEDNN_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, residual = (torch.randn(shape, generator=generator).to(dtype) for shape in ((5, 24), (16, 24), (5, 16)))
    try:
        with torch.no_grad():
            plain = onednn_linear(x, weight)
            fused = onednn_linear_plus(residual, x, weight)
            transposed = onednn_linear(residual, weight.t())
    except (AttributeError, RuntimeError):
        return False
    reference = x.float() @ weight.float().t()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    return bool(torch.allclose(plain.float(), reference, atol=tolerance)
                and torch.allclose(fused.float(), reference + residual.float(), atol=tolerance)
                and torch.allclose(transposed.float(), residual.float() @ weight.float(), atol=tolerance))


class OneDNNRows:
    """Which row counts reach oneDNN. oneDNN (through ideep's cache) builds and keeps a primitive per
    GEMM shape it meets, ~0.65 MB of JIT code each, and holds up to 1024 of them: measured, 600 row
    counts x 8 training GEMM shapes grew RSS by 2.4 GB. So a caller with unbounded row counts (a
    prefill length, a micro-batch width) must keep to a bounded set: multiples of `multiple`, at
    most `max_rows`, at most `capacity` distinct ones (the first met), and products of at least
    ONEDNN_MIN_MACS. Everything else runs on MKL."""

    def __init__(self, multiple: int, max_rows: Optional[int] = None, capacity: Optional[int] = None):
        self.multiple, self.max_rows, self.capacity = multiple, max_rows, capacity
        self.admitted = set()

    def admits(self, rows: int, weight: torch.Tensor) -> bool:
        if rows == 0 or rows % self.multiple or rows * weight.numel() < ONEDNN_MIN_MACS:
            return False
        if self.max_rows is not None and rows > self.max_rows:
            return False
        if rows not in self.admitted:
            if self.capacity is not None and len(self.admitted) >= self.capacity:
                return False
            self.admitted.add(rows)
        return True

    def round_up(self, rows: int) -> int:
        return -(-rows // self.multiple) * self.multiple

    def round_down(self, rows: int) -> int:
        return rows // self.multiple * self.multiple


def bounded_linear(x: torch.Tensor, weight: torch.Tensor, rows: OneDNNRows) -> torch.Tensor:
    """x [n, in] @ weight[out, in].T on oneDNN at a row count `rows` admits, else on MKL.

    A row count off the multiple costs one copy: either x padded with zero rows up to the next
    multiple (their output rows dropped), or the product split into a oneDNN part of the largest
    multiple and an MKL tail stitched behind it; whichever copies the narrower matrix (x is `in`
    wide, the output `out` wide: for a 576 -> 3072 projection padding copies 5x less), padding
    only while it adds at most 1/MAX_PAD_FRACTION of n in wasted rows."""
    n, inner = x.shape
    padded, bulk = rows.round_up(n), rows.round_down(n)
    if inner <= weight.shape[0] and (padded - n) * MAX_PAD_FRACTION <= n:
        if not rows.admits(padded, weight):
            return x @ weight.t()
        if padded == n:
            return onednn_linear(x, weight)
        buffer = x.new_empty((padded, inner))
        buffer[:n] = x
        buffer[n:] = 0
        return onednn_linear(buffer, weight)[:n]
    if not rows.admits(bulk, weight):
        return x @ weight.t()
    head = onednn_linear(x[:bulk], weight)
    return head if bulk == n else torch.cat([head, x[bulk:] @ weight.t()])
