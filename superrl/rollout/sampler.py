"""Token sampling with counter-based randomness, plus the raw log-prob of each sampled token.

Randomness is a pure function of (sequence seed, decode step, vocab id) computed with integer
hashing, not drawn from a stateful generator. A sequence therefore samples the same tokens whatever
batch it shares, whichever cache slot it lands in and however many slots the engine has, and the
whole batch is sampled with a few vectorised ops (Gumbel-max) instead of one RNG call per row.
"""
import torch

from superrl.rollout.types import SamplingParams

MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for x in [0, 2**32) without overflowing int64."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """`lowbias32` integer hash (C. Wellons): a bijection on 32-bit ints with good avalanche."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sequence_seeds(base_seed: int, prompt_index: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """A 32-bit seed per (prompt, sample): samples of one prompt differ, reruns repeat."""
    base = torch.tensor((base_seed ^ (base_seed >> 32)) & MASK32, dtype=torch.int64)
    return hash32(hash32(hash32(base) ^ prompt_index) ^ sample_index)


def raw_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) under the model's own distribution: temperature 1, no top-k/top-p.

    This is what the trainer recomputes as the old-policy log-prob, so it must not depend on the
    sampling knobs that only shape exploration.
    """
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)


class Sampler:
    def __init__(self, params: SamplingParams, vocab_size: int, device):
        self.temperature = params.temperature
        self.top_k = params.top_k if params.top_k and 0 < params.top_k < vocab_size else 0
        self.top_p = params.top_p
        self.vocab_keys = hash32(torch.arange(vocab_size, dtype=torch.int64, device=device) + 0x9E3779B9)

    def _uniform(self, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """U(0, 1) float32 [B, vocab], a pure function of (seed, step, vocab id)."""
        row_keys = hash32(seeds ^ hash32(steps))
        bits = hash32(row_keys[:, None] ^ self.vocab_keys[None, :]) >> 8  # 24 bits: exact in float32
        return (bits.float() + 0.5) * (1.0 / (1 << 24))

    def _filter(self, scores: torch.Tensor) -> torch.Tensor:
        """top-k, then top-p on what is left (vLLM's order); filtered entries become -inf."""
        if self.top_k:
            kth_best = scores.topk(self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth_best, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            probs = sorted_scores.softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs
            drop_sorted = mass_before >= self.top_p  # keep the smallest prefix reaching top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        return scores

    def __call__(self, logits: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> tuple:
        """logits float32 [B, vocab] -> (tokens [B] int64, raw log-probs [B] float32)."""
        if self.temperature == 0:
            tokens = logits.argmax(dim=-1)
        else:
            scores = self._filter(logits / self.temperature)
            gumbel = -torch.log(-torch.log(self._uniform(seeds, steps)))
            tokens = (scores + gumbel).argmax(dim=-1)  # Gumbel-max: an exact draw from softmax(scores)
        return tokens, raw_logprobs(logits, tokens)
