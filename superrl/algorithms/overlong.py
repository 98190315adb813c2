"""DAPO's overlong reward shaping (Yu et al. 2025, arXiv 2503.14476, "soft overlong punishment").

A response of L tokens with at most L_max = `rollout.max_tokens` and a buffer of B =
`reward.overlong_buffer_len` tokens gets, with penalty factor f = `reward.overlong_penalty`,

    penalty(L) = 0                                    L <= L_max - B
                 -f * (L - (L_max - B)) / B           L_max - B < L <= L_max
                 -f                                   L > L_max (an engine never returns one)

added to its reward before the advantages. Lengths count every response token, the EOS the engine
stopped on included (what the policy is trained on).
"""
import torch


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer_len: int, penalty: float) -> torch.Tensor:
    """penalty(L) of every response length in `lengths` (any shape, float64 out); buffer_len >= 1
    and <= max_tokens (checked when the config is loaded)."""
    over = (lengths.to(torch.float64) - (max_tokens - buffer_len)).clamp(min=0, max=buffer_len)
    return -penalty * over / buffer_len
