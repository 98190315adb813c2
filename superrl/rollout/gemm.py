"""How the decoder's linear layers run: `linear(x, w, bias)` = x W^T + b and `linear_plus(r, x, w)`
= r + x W^T, with W an HF-layout [out, in] weight, behind one of two backends chosen per engine.

* `OneDNNGemm` (CPU, float32 / bf16 / fp16, torch built with oneDNN): oneDNN's JIT GEMM through
  `torch.ops.mkldnn._linear_pointwise`, straight off the HF-layout weights, the residual add fused
  (tiny products stay on MKL, see the class).
  Measured on this project's CPU box (AMD EPYC, AVX-512): half the time of torch's default MKL
  sgemm for every row count from 8 to 1392 at llama-small shapes (MKL takes a slower code path
  on AMD). The op is internal to torch (inductor's CPU linear), so it is probed at start-up and
  `TransposedGemm` takes over when it is missing or disagrees with `torch.mm`.
* `TransposedGemm` (everything else): `x @ w` on [in, out] copies of the weights on CPU, where MKL
  reads a cold [in, out] weight 20-25% faster than a cold [out, in] one during decode; views on
  GPU. The HF-layout buffers stay the source of truth (weight sync writes them at memcpy speed; a
  transposing copy is ~10x slower): the copies are refreshed lazily by comparing the sources'
  version counters, which every in-place write bumps (`update_weights`, a `state_dict()` view);
  writes from other processes bypass them, so those call `invalidate()`.
"""
import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from superrl.rollout.decoder_weights import DecoderWeights

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ONEDNN_MIN_MACS = 2 ** 21


@dataclass
class LayerOperands:
    qkv: torch.Tensor
    qkv_bias: Optional[torch.Tensor]
    o_proj: torch.Tensor
    gate_up: torch.Tensor
    down_proj: torch.Tensor


def _gemm_weights(weights: DecoderWeights) -> list:
    """lm_head, then each layer's qkv, o_proj, gate_up, down_proj."""
    return [weights.lm_head] + [w for layer in weights.layers
                                for w in (layer.qkv, layer.o_proj, layer.gate_up, layer.down_proj)]


def _layer_operands(weights: DecoderWeights, operands: list) -> list:
    """Regroup `_gemm_weights`-ordered operands per layer."""
    return [LayerOperands(qkv, layer.qkv_bias, o_proj, gate_up, down_proj)
            for layer, (qkv, o_proj, gate_up, down_proj)
            in zip(weights.layers, zip(*[iter(operands[1:])] * 4))]


class OneDNNGemm:
    """Products below ONEDNN_MIN_MACS go to MKL: oneDNN's call costs ~8 us more, which only a
    product of about 2M multiply-adds earns back (32 rows x 128 x 768: 30 us vs MKL's 42; at
    32 x 128 x 256: 18 vs 15)."""

    def __init__(self, weights: DecoderWeights):
        self.lm_head = weights.lm_head
        self.layers = _layer_operands(weights, _gemm_weights(weights))

    @staticmethod
    def linear(x, weight, bias=None):
        if x.shape[0] * weight.numel() < ONEDNN_MIN_MACS:
            return F.linear(x, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def linear_plus(residual, x, weight):
        if x.shape[0] * weight.numel() < ONEDNN_MIN_MACS:
            return torch.addmm(residual, x, weight.t())
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, None, "add")

    def refresh(self) -> None:
        """Nothing derived: the GEMMs read the live weights."""

    def invalidate(self) -> None:
        """Nothing derived: the GEMMs read the live weights."""


class TransposedGemm:
    def __init__(self, weights: DecoderWeights):
        self._sources = _gemm_weights(weights)
        self._copies = weights.embed.device.type == "cpu"
        self._operands = [w.t().contiguous() if self._copies else w.t() for w in self._sources]
        self._versions = self._current_versions()
        self.lm_head = self._operands[0]
        self.layers = _layer_operands(weights, self._operands)

    @staticmethod
    def linear(x, weight, bias=None):
        return x @ weight if bias is None else torch.addmm(bias, x, weight)

    @staticmethod
    def linear_plus(residual, x, weight):
        return torch.addmm(residual, x, weight)

    def _current_versions(self) -> Optional[list]:
        """None when unknowable: tensors made under inference_mode have no version counter."""
        if any(w.is_inference() for w in self._sources):
            return None
        return [w._version for w in self._sources]

    def invalidate(self) -> None:
        """Make the next `refresh` re-derive every copy (for writes no version counter saw)."""
        self._versions = None

    def refresh(self) -> None:
        """Re-derive the [in, out] copies of the weights written since the last call."""
        if not self._copies:
            return  # views: always current
        versions = self._current_versions()
        if versions is not None and versions == self._versions:
            return
        with torch.no_grad():
            for index, (operand, source) in enumerate(zip(self._operands, self._sources)):
                if versions is None or self._versions is None or versions[index] != self._versions[index]:
                    operand.copy_(source.t())
        self._versions = versions


@functools.lru_cache(maxsize=None)
def onednn_linear_works(dtype: torch.dtype) -> bool:
    """The internal op exists and agrees with torch.mm (with and without the fused add)."""
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, residual = (torch.randn(shape, generator=generator).to(dtype)
                           for shape in ((64, 256), (128, 256), (64, 128)))  # above ONEDNN_MIN_MACS
    try:
        with torch.no_grad():
            plain, fused = OneDNNGemm.linear(x, weight), OneDNNGemm.linear_plus(residual, x, weight)
    except (AttributeError, RuntimeError):
        return False
    reference = (x.float() @ weight.float().t())
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    return bool(torch.allclose(plain.float(), reference, atol=tolerance)
                and torch.allclose(fused.float(), reference + residual.float(), atol=tolerance))


def make_gemm(weights: DecoderWeights):
    dtype, device = weights.embed.dtype, weights.embed.device
    if device.type == "cpu" and dtype in _ONEDNN_DTYPES and onednn_linear_works(dtype):
        return OneDNNGemm(weights)
    return TransposedGemm(weights)
