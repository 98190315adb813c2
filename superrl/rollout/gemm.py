"""How the decoder's linear layers run: `linear(x, w, bias)` = x W^T + b and `linear_plus(r, x, w)`
= r + x W^T, with W an HF-layout [out, in] weight, behind one of two backends chosen per engine.

* `OneDNNGemm` (CPU, float32 / bf16 / fp16, torch built with oneDNN): oneDNN's JIT GEMM
  (superrl/ops/onednn.py, shared with training) straight off the HF-layout weights, the residual
  add fused (small products and unbounded shape sets stay on MKL, see the class). Measured on this
  project's CPU box: half the time of torch's default MKL sgemm for every row count from 8 to 1392
  at llama-small shapes. `TransposedGemm` takes over when the start-up probe fails.
* `TransposedGemm` (everything else): `x @ w` on [in, out] copies of the weights on CPU, where MKL
  reads a cold [in, out] weight 20-25% faster than a cold [out, in] one during decode; views on
  GPU. The HF-layout buffers stay the source of truth (weight sync writes them at memcpy speed; a
  transposing copy is ~10x slower): the copies are refreshed lazily by comparing the sources'
  version counters, which every in-place write bumps (`update_weights`, a `state_dict()` view);
  writes from other processes bypass them, so those call `invalidate()`.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from superrl.ops.onednn import OneDNNRows, onednn_linear, onednn_linear_plus, onednn_linear_works
from superrl.rollout.decoder_weights import DecoderWeights


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
    """A shape per prefill length would grow oneDNN's primitive cache without bound (OneDNNRows), so
    only row counts that are multiples of ROW_MULTIPLE up to `max_rows` (the engine's batch slots;
    decode rows are rounded up to match) run on oneDNN: a fixed, small set of shapes. Other row
    counts run on MKL."""

    ROW_MULTIPLE = 8

    def __init__(self, weights: DecoderWeights, max_rows: int):
        self.lm_head = weights.lm_head
        self.layers = _layer_operands(weights, _gemm_weights(weights))
        self.rows = OneDNNRows(self.ROW_MULTIPLE, max_rows=max_rows)

    def _on_onednn(self, x, weight) -> bool:
        return self.rows.admits(x.shape[0], weight)

    def linear(self, x, weight, bias=None):
        if not self._on_onednn(x, weight):
            return F.linear(x, weight, bias)
        return onednn_linear(x, weight, bias)

    def linear_plus(self, residual, x, weight):
        if not self._on_onednn(x, weight):
            return torch.addmm(residual, x, weight.t())
        return onednn_linear_plus(residual, x, weight)

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


def make_gemm(weights: DecoderWeights, max_rows: int):
    """max_rows: the most rows a decode step has (the engine's batch slots)."""
    dtype, device = weights.embed.dtype, weights.embed.device
    if device.type == "cpu" and onednn_linear_works(dtype):
        return OneDNNGemm(weights, max_rows)
    return TransposedGemm(weights)


def decode_rows(rows: int, slots: int) -> int:
    """Rows a decode step runs: rounded up to OneDNNGemm.ROW_MULTIPLE (idle rows are free cache
    slots), so decode keeps to the few shapes oneDNN runs; never more than the cache has."""
    multiple = OneDNNGemm.ROW_MULTIPLE
    return min(-(-rows // multiple) * multiple, slots)
