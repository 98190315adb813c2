"""Attention for the two forward shapes: whole prompts (prefill) and one token per row (decode).

Decode: one query token per cache row against that row's cached keys/values.

Grouped-query heads share their KV head as a [group, head_dim] query block (no repeat of K/V).
On CPU in float32 the per-row problems are tiny (a few query rows x a few hundred keys): two
batched GEMMs straight off the cache views, with scale and mask folded into the `baddbmm`,
measured faster than `scaled_dot_product_attention` there (bench/rollout.py --profile).
Elsewhere (GPU; half precision, where float32 accumulation matters) SDPA is used.
"""
import math

import torch
import torch.nn.functional as F


class DecodeAttention:
    """Per decode step state shared by all layers: the additive mask, already in bmm layout."""

    def __init__(self, positions: torch.Tensor, context: int, kv_heads: int, group: int, dtype):
        rows = positions.shape[0]
        visible = torch.arange(context, device=positions.device) <= positions[:, None]
        bias = torch.where(visible, 0.0, float("-inf")).to(dtype)[:, None, None, :]  # [B, 1, 1, context]
        self.kv_heads, self.group = kv_heads, group
        self.use_bmm = positions.device.type == "cpu" and dtype == torch.float32
        if self.use_bmm:  # one row of the mask per (row, kv head) bmm batch, built once per step
            bias = bias.expand(rows, kv_heads, group, context).reshape(rows * kv_heads, group, context)
        self.bias = bias

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """q [B, heads, head_dim]; keys/values [B, kv_heads, context, head_dim] (views of the
        cache) -> [B, heads * head_dim]."""
        rows, _, context, head_dim = keys.shape
        grouped_q = q.unflatten(1, (self.kv_heads, self.group))  # [B, kv_heads, group, head_dim]
        if not self.use_bmm:
            return F.scaled_dot_product_attention(grouped_q, keys, values, attn_mask=self.bias).flatten(1)
        batch = rows * self.kv_heads  # (row, kv head) pairs: keys' two leading axes merge into a view
        scores = torch.baddbmm(self.bias, grouped_q.reshape(batch, self.group, head_dim),
                               keys.reshape(batch, context, head_dim).transpose(1, 2),
                               alpha=1.0 / math.sqrt(head_dim))
        return torch.bmm(scores.softmax(dim=-1), values.reshape(batch, context, head_dim)).view(rows, -1)


class PrefillAttention:
    """Causal attention over prompts packed without padding ([N] tokens over b prompts): q/k/v are
    scattered into a right-padded [b, T] layout for SDPA and the real rows gathered back. Right
    padding keeps every token at its true position and the plain causal mask keeps real queries
    off the pad entries."""

    def __init__(self, rows: torch.Tensor, positions: torch.Tensor, batch: int, length: int,
                 heads: int, kv_heads: int):
        self.padded_at = rows * length + positions  # row of each token in [b * T]
        self.batch, self.length, self.split = batch, length, [heads, kv_heads, kv_heads]

    def __call__(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv [N, heads + 2 * kv_heads, head_dim] -> [N, heads * head_dim]."""
        padded = qkv.new_zeros(self.batch * self.length, *qkv.shape[1:]).index_copy_(0, self.padded_at, qkv)
        q, k, v = padded.view(self.batch, self.length, *qkv.shape[1:]).transpose(1, 2).split(self.split, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return out.transpose(1, 2).flatten(0, 1)[self.padded_at].flatten(1)
