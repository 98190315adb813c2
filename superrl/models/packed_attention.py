"""Packed sequences with the local layer spec (CPU): megatron's DotProductAttention refuses
PackedSeqParams, so this subclass turns them into the attention they stand for.

Megatron's attention module handles the rest of the packed ('thd') path for any core attention: it
applies RoPE per segment from cu_seqlens (each row's positions restart at 0), squeezes the dummy
batch dimension before the core attention and restores it after. Here the segments become a
block-diagonal causal mask over the one packed sequence; DotProductAttention uses a passed mask
as given (it builds the causal one only when none is passed), with True = masked.
"""
import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention


def document_causal_mask(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[1, 1, t, t] bool, True where query i must not see key j: j after i, or in another segment."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)
    t = segment.shape[0]
    future = torch.ones(t, t, dtype=torch.bool, device=cu_seqlens.device).triu(1)
    return (future | (segment[:, None] != segment[None, :]))[None, None]


class PackedDotProductAttention(DotProductAttention):
    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is None:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
        # thd tensors are [t, heads, dim]; DotProductAttention takes [s, b, heads, dim] with b = 1
        query, key, value = (x.unsqueeze(1) for x in (query, key, value))
        mask = document_causal_mask(packed_seq_params.cu_seqlens_q)
        return super().forward(query, key, value, mask, attn_mask_type, attention_bias)
