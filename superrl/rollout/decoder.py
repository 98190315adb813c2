"""Pure-torch Llama / Qwen2 forward over a slot KV cache: batched prefill and one-token decode.

Numerics follow `transformers` (float32 RMSNorm statistics, float32 RoPE tables, SDPA attention),
so greedy decoding reproduces HF token for token and log-probs agree to float rounding.
"""
import torch
import torch.nn.functional as F

from superrl.rollout.decoder_weights import DecoderWeights, LayerWeights
from superrl.rollout.kv_cache import KVCache
from superrl.rollout.rope import apply_rope, cos_sin_table


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)  # fused; bit-equal to HF's formula
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)  # half precision: float32 statistics, as HF
    return weight * normed.to(x.dtype)


def linear_plus(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """residual + x @ weight.T in one GEMM call (x and residual 2-D)."""
    return torch.addmm(residual, x, weight.t())


class Decoder:
    def __init__(self, weights: DecoderWeights):
        self.w = weights
        self.cfg = weights.cfg
        self.cos = self.signed_sin = weights.embed.new_empty(0, self.cfg.head_dim)

    def reserve_positions(self, count: int) -> None:
        """Grow the RoPE tables to cover positions [0, count) (sized lazily: 128k-context models)."""
        if self.cos.shape[0] < count:
            w = self.w.embed
            self.cos, self.signed_sin = cos_sin_table(self.cfg.rope, self.cfg.head_dim, count, w.dtype, w.device)

    def _block(self, x, layer: LayerWeights, cos, signed_sin, attend):
        """One transformer layer on tokens x [N, hidden]; `attend(q, k, v)` ([N, heads, head_dim]
        each) writes the cache and returns attention output [N, heads * head_dim]."""
        cfg = self.cfg
        h = rms_norm(x, layer.input_norm, cfg.rms_norm_eps)
        qkv = F.linear(h, layer.qkv, layer.qkv_bias).unflatten(-1, (-1, cfg.head_dim))
        heads_qk = cfg.num_heads + cfg.num_kv_heads
        qk = apply_rope(qkv[:, :heads_qk], cos, signed_sin)  # one rotation for q and k together
        q, k = qk.split([cfg.num_heads, cfg.num_kv_heads], dim=1)
        x = linear_plus(x, attend(q, k, qkv[:, heads_qk:]), layer.o_proj)
        h = rms_norm(x, layer.post_norm, cfg.rms_norm_eps)
        gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
        return linear_plus(x, F.silu(gate) * up, layer.down_proj)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        h = rms_norm(x, self.w.final_norm, self.cfg.rms_norm_eps)
        return F.linear(h, self.w.lm_head).float()

    def prefill(self, tokens: torch.Tensor, slots: torch.Tensor, last_index: torch.Tensor,
                cache: KVCache) -> torch.Tensor:
        """tokens [b, T] right-padded prompts written into cache rows `slots` at positions [0, T).

        Right padding keeps every real token at its true position, and a plain causal mask already
        stops real tokens from seeing the pads after them; the pads' cache entries lie beyond each
        sequence's length, so decode masks them out and later overwrites them.
        Returns float32 logits [b, vocab] at each prompt's last real token (`last_index`).
        """
        batch, length = tokens.shape
        positions = torch.arange(length, device=tokens.device).repeat(batch)
        cos, signed_sin = self.cos[positions, None, :], self.signed_sin[positions, None, :]

        def by_sequence(t):  # [b * T, heads, head_dim] -> [b, heads, T, head_dim]
            return t.unflatten(0, (batch, length)).transpose(1, 2)

        x = F.embedding(tokens.flatten(), self.w.embed)
        for index, layer in enumerate(self.w.layers):
            def attend(q, k, v, index=index):
                k, v = by_sequence(k), by_sequence(v)
                cache.keys[index, slots, :, :length] = k
                cache.values[index, slots, :, :length] = v
                out = F.scaled_dot_product_attention(by_sequence(q), k, v, is_causal=True, enable_gqa=True)
                return out.transpose(1, 2).flatten(0, 1).flatten(1)
            x = self._block(x, layer, cos, signed_sin, attend)
        last = torch.arange(batch, device=x.device) * length + last_index
        return self._logits(x[last])

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, context: int,
               cache: KVCache) -> torch.Tensor:
        """One new token per cache row 0..B-1 (tokens/positions [B]); attends to `context` positions.

        Rows are cache slots, so the keys of rows [0, B) are a view of the cache. Grouped-query
        attention without repeating K/V: the query heads sharing a KV head become that head's
        query "sequence" ([B, kv_heads, group, head_dim]).
        """
        cfg, rows = self.cfg, tokens.shape[0]
        group = cfg.num_heads // cfg.num_kv_heads
        cos, signed_sin = self.cos[positions, None, :], self.signed_sin[positions, None, :]
        visible = torch.arange(context, device=tokens.device) <= positions[:, None]
        mask = visible[:, None, None, :]
        all_rows = torch.arange(rows, device=tokens.device)
        x = F.embedding(tokens, self.w.embed)
        for index, layer in enumerate(self.w.layers):
            def attend(q, k, v, index=index):
                cache.keys[index, all_rows, :, positions] = k
                cache.values[index, all_rows, :, positions] = v
                keys = cache.keys[index, :rows, :, :context]
                values = cache.values[index, :rows, :, :context]
                grouped_q = q.reshape(rows, cfg.num_kv_heads, group, cfg.head_dim)
                out = F.scaled_dot_product_attention(grouped_q, keys, values, attn_mask=mask)
                return out.reshape(rows, cfg.num_heads * cfg.head_dim)
            x = self._block(x, layer, cos, signed_sin, attend)
        return self._logits(x)
