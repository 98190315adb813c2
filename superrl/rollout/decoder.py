"""Pure-torch Llama / Qwen2 forward over a slot KV cache: batched prefill and one-token decode.

Numerics follow `transformers` (float32 RMSNorm statistics, float32 RoPE tables, SDPA attention),
so greedy decoding reproduces HF token for token and log-probs agree to float rounding.
"""
from dataclasses import dataclass

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

    def prefill(self, prompts: PackedPrompts, cache: KVCache) -> torch.Tensor:
        """Run whole prompts, write their keys/values into cache rows `prompts.slots`, and return
        float32 logits [b, vocab] at each prompt's last token.

        GEMMs run on the packed real tokens only; attention alone scatters queries into a
        right-padded [b, T] layout and reads keys back from the cache. Right padding keeps every
        token at its true position and a plain causal mask keeps real queries off the pad entries.
        """
        batch, length = prompts.slots.shape[0], prompts.longest
        cos = self.cos[prompts.positions, None, :]
        signed_sin = self.signed_sin[prompts.positions, None, :]
        token_slots = prompts.slots[prompts.rows]
        x = F.embedding(prompts.tokens, self.w.embed)
        for index, layer in enumerate(self.w.layers):
            def attend(q, k, v, index=index):
                cache.keys[index, token_slots, :, prompts.positions] = k
                cache.values[index, token_slots, :, prompts.positions] = v
                keys = cache.keys[index, prompts.slots, :, :length]  # [b, kv_heads, T, head_dim]
                values = cache.values[index, prompts.slots, :, :length]
                padded_q = q.new_zeros(batch, length, *q.shape[1:])
                padded_q[prompts.rows, prompts.positions] = q
                out = F.scaled_dot_product_attention(padded_q.transpose(1, 2), keys, values,
                                                     is_causal=True, enable_gqa=True)
                return out.transpose(1, 2)[prompts.rows, prompts.positions].flatten(1)
            x = self._block(x, layer, cos, signed_sin, attend)
        return self._logits(x[prompts.last])

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
