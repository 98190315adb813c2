"""Pure-torch Llama / Qwen2 / Qwen3 forward over a slot KV cache: batched prefill and one-token decode.

Numerics follow `transformers` (float32 RMSNorm statistics, float32 RoPE tables, softmax
attention), so greedy decoding reproduces HF token for token and log-probs agree to float rounding.

Where the CPU time goes (llama-small, batch 32; `bench/rollout.py --profile`): the GEMMs (run by
the fastest backend for the device, gemm.py), decode attention reading the KV cache, and the
per-op cost of ~180 small ops per decode step. So the forward avoids extra ops and passes: one
cache write per layer (kv_cache.py), rotary embedding in place, attention straight off cache views.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from superrl.rollout.attention import DecodeAttention, PrefillAttention
from superrl.rollout.decoder_weights import DecoderWeights, LayerWeights
from superrl.rollout.kv_cache import KVCache
from superrl.rollout.gemm import LayerOperands, make_gemm
from superrl.rollout.rope import apply_rope_, cos_sin_table


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, eps_tensor: torch.Tensor) -> torch.Tensor:
    """eps_tensor: eps as a 0-dim float32 tensor (a Python scalar costs a conversion per call)."""
    if x.dtype == torch.float32:
        # HF's formula, op for op (bit-equal), in 6 kernels: F.rms_norm dispatches ~10 on CPU,
        # which shows at decode sizes ([batch, hidden]).
        inverse_rms = (x * x).mean(-1, keepdim=True).add_(eps_tensor).rsqrt_()
        return (x * inverse_rms).mul_(weight)
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)  # half precision: float32 statistics, as HF
    return weight * normed.to(x.dtype)


@dataclass
class PackedPrompts:
    """A prefill batch concatenated without padding (N real tokens over b prompts)."""
    tokens: torch.Tensor  # [N]
    positions: torch.Tensor  # [N] position of each token within its prompt
    rows: torch.Tensor  # [N] which prompt (0..b-1) each token belongs to
    slots: torch.Tensor  # [b] cache slot of each prompt
    last: torch.Tensor  # [b] packed index of each prompt's last token
    longest: int

    @classmethod
    def build(cls, prompts: list, slots: list, device) -> "PackedPrompts":
        lengths = torch.tensor([len(p) for p in prompts])
        rows = torch.arange(len(prompts)).repeat_interleave(lengths)
        starts = lengths.cumsum(0) - lengths
        positions = torch.arange(int(lengths.sum())) - starts[rows]
        tokens = torch.tensor([t for p in prompts for t in p])
        return cls(tokens.to(device), positions.to(device), rows.to(device),
                   torch.tensor(slots, device=device), (starts + lengths - 1).to(device), int(lengths.max()))


class Decoder:
    def __init__(self, weights: DecoderWeights, max_rows: int):
        """max_rows: the most rows a decode step has (the engine's batch slots)."""
        self.w = weights
        self.cfg = weights.cfg
        self.gemm = make_gemm(weights, max_rows)
        self.rope_table = weights.embed.new_empty(0, 2, self.cfg.head_dim)  # [positions, (cos, signed sin), D]
        self._eps = torch.tensor(self.cfg.rms_norm_eps, dtype=torch.float32, device=weights.embed.device)

    def reserve_positions(self, count: int) -> None:
        """Grow the RoPE tables to cover positions [0, count) (sized lazily: 128k-context models)."""
        if self.rope_table.shape[0] < count:
            w = self.w.embed
            cos, signed_sin = cos_sin_table(self.cfg.rope, self.cfg.head_dim, count, w.dtype, w.device)
            self.rope_table = torch.stack([cos, signed_sin], dim=1)

    def _rope_at(self, positions: torch.Tensor) -> tuple:
        """cos and signed sin [N, 1, head_dim] at each position, from one gather."""
        table = self.rope_table[positions]
        return table[:, :1], table[:, 1:]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, weight, self.cfg.rms_norm_eps, self._eps)

    def refresh_weights(self) -> None:
        """Call before a forward pass: picks up weights written since the last one."""
        self.gemm.refresh()

    def _layers(self):
        return zip(self.w.layers, self.gemm.layers)

    def _qkv(self, x, layer: LayerWeights, operands: LayerOperands, cos, signed_sin) -> torch.Tensor:
        """First half of a layer on tokens x [N, hidden]: the projections [N, heads + 2 * kv_heads,
        head_dim] (q heads, k heads, v heads) with q and k rotated."""
        cfg = self.cfg
        h = self._norm(x, layer.input_norm)
        qkv = self.gemm.linear(h, operands.qkv, operands.qkv_bias).unflatten(-1, (-1, cfg.head_dim))
        if cfg.qk_norm:  # Qwen3: every q and k head normalised over head_dim, before RoPE
            for heads, weight in ((slice(0, cfg.num_heads), layer.q_norm),
                                  (slice(cfg.num_heads, cfg.num_heads + cfg.num_kv_heads), layer.k_norm)):
                qkv[:, heads] = self._norm(qkv[:, heads], weight)
        apply_rope_(qkv[:, :cfg.num_heads + cfg.num_kv_heads], cos, signed_sin)  # q and k at once
        return qkv

    def _finish(self, x, attended, layer: LayerWeights, operands: LayerOperands) -> torch.Tensor:
        """Second half of a layer: output projection and MLP, both with their residual adds."""
        x = self.gemm.linear_plus(x, attended, operands.o_proj)
        h = self._norm(x, layer.post_norm)
        gate, up = self.gemm.linear(h, operands.gate_up).chunk(2, dim=-1)
        return self.gemm.linear_plus(x, F.silu(gate).mul_(up), operands.down_proj)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self._norm(x, self.w.final_norm)
        return self.gemm.linear(h, self.gemm.lm_head).float()

    def prefill(self, prompts: PackedPrompts, cache: KVCache) -> torch.Tensor:
        """Run whole prompts, write their keys/values into cache rows `prompts.slots`, and return
        float32 logits [b, vocab] at each prompt's last token.

        GEMMs run on the packed real tokens only. Only the last token of each prompt reaches the
        logits, so the last layer stops at the cache write for the others: its attention, output
        projection and MLP run on b rows, not N (a fifth of the prefill GEMM work at 4 layers).
        """
        cfg = self.cfg
        cos, signed_sin = self._rope_at(prompts.positions)
        write_at = cache.write_index(prompts.slots[prompts.rows], prompts.positions)
        causal = PrefillAttention(prompts.rows, prompts.positions, prompts.slots.shape[0], prompts.longest,
                                  cfg.num_heads, cfg.num_kv_heads)
        last_layer = len(self.w.layers) - 1
        x = F.embedding(prompts.tokens, self.w.embed)
        for index, (layer, operands) in enumerate(self._layers()):
            qkv = self._qkv(x, layer, operands, cos, signed_sin)
            cache.write(index, write_at, qkv[:, cfg.num_heads:])
            if index < last_layer:
                x = self._finish(x, causal(qkv), layer, operands)
            else:
                attended = self._last_token_attention(qkv, prompts, cache, index)
                x = self._finish(x[prompts.last], attended, layer, operands)
        return self._logits(x)

    def _last_token_attention(self, qkv: torch.Tensor, prompts: PackedPrompts, cache: KVCache,
                              index: int) -> torch.Tensor:
        """Attention of each prompt's last token alone: a decode step over the freshly written cache."""
        cfg = self.cfg
        attention = DecodeAttention(prompts.positions[prompts.last], prompts.longest, cfg.num_kv_heads,
                                    cfg.num_heads // cfg.num_kv_heads, qkv.dtype)
        keys = cache.keys[index][prompts.slots, :, :prompts.longest]  # [b, kv_heads, T, head_dim]
        values = cache.values[index][prompts.slots, :, :prompts.longest]
        return attention(qkv[prompts.last, :cfg.num_heads], keys, values)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, context: int,
               cache: KVCache) -> torch.Tensor:
        """One new token per cache row 0..B-1 (tokens/positions [B]); attends to `context` positions.

        Rows are cache slots, so the keys of rows [0, B) are a view of the cache.
        """
        cfg, rows = self.cfg, tokens.shape[0]
        cos, signed_sin = self._rope_at(positions)
        write_at = cache.write_index(torch.arange(rows, device=tokens.device), positions)
        attention = DecodeAttention(positions, context, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads,
                                    self.w.embed.dtype)
        x = F.embedding(tokens, self.w.embed)
        for index, (layer, operands) in enumerate(self._layers()):
            qkv = self._qkv(x, layer, operands, cos, signed_sin)
            cache.write(index, write_at, qkv[:, cfg.num_heads:])
            keys = cache.keys[index][:rows, :, :context]  # views: rows are cache slots
            values = cache.values[index][:rows, :, :context]
            x = self._finish(x, attention(qkv[:, :cfg.num_heads], keys, values), layer, operands)
        return self._logits(x)
