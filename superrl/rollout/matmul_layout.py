"""GEMM operands in [in, out] layout (`x @ w`), derived from the HF-layout [out, in] weights.

Why: during decode the weights never stay in cache (a step streams all of them), and MKL reads a
cold [out, in] weight for `x @ W.T` far slower than a cold [in, out] one -- measured on this
project's CPU box: 20-25% less time for the decode GEMMs (M = batch rows), the same for prefill.

The HF-layout buffers stay the source of truth (weight sync copies into them at memcpy speed; a
transposing copy is ~10x slower). The [in, out] copies are refreshed lazily: `refresh()` compares
the sources' version counters, which every in-place write bumps -- `update_weights`, or a write
through a `state_dict()` view -- so nothing can leave them stale. Cost: a second copy of the
GEMM weights, on CPU only; on GPU (cuBLAS has no such penalty) the operands are views.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from superrl.rollout.decoder_weights import DecoderWeights


@dataclass
class LayerOperands:
    qkv: torch.Tensor  # [hidden, (heads + 2 * kv_heads) * head_dim]
    qkv_bias: Optional[torch.Tensor]
    o_proj: torch.Tensor  # [heads * head_dim, hidden]
    gate_up: torch.Tensor  # [hidden, 2 * intermediate]
    down_proj: torch.Tensor  # [intermediate, hidden]


class MatmulLayout:
    def __init__(self, weights: DecoderWeights):
        self._sources = [weights.lm_head]
        for layer in weights.layers:
            self._sources += [layer.qkv, layer.o_proj, layer.gate_up, layer.down_proj]
        self._copies = weights.embed.device.type == "cpu"
        self._operands = [w.t().contiguous() if self._copies else w.t() for w in self._sources]
        self._versions = self._current_versions()
        self.lm_head = self._operands[0]
        self.layers = []
        for index, layer in enumerate(weights.layers):
            qkv, o_proj, gate_up, down_proj = self._operands[1 + 4 * index: 5 + 4 * index]
            self.layers.append(LayerOperands(qkv, layer.qkv_bias, o_proj, gate_up, down_proj))

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
