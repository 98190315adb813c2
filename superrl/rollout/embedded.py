"""EmbeddedEngine: the default rollout engine, pure torch, in the trainer's own process (CPU or GPU).

    engine = EmbeddedEngine("/path/to/hf_model")
    outs = engine.generate([[1, 5, 9], [1, 7]], SamplingParams(n=4, temperature=1.0, max_tokens=64))
    outs[0][2].token_ids, outs[0][2].logprobs, outs[0][2].finish_reason
    engine.update_weights(hf_named_tensors)  # after each optimizer step

How it runs: requests wait in a queue; free KV-cache slots take them in a batched prefill; all
running sequences then advance one token per decode step; a sequence that stops frees its slot for
the next request (continuous batching). Sampling randomness is a function of (seed, prompt index,
sample index, step) only -- see sampler.py -- so a seeded call returns the same tokens whatever
`max_batch_size` is.

GEMMs: oneDNN straight off the live weights on CPU where torch has it; otherwise (a CPU without
it) a second, [in, out]-layout copy of the GEMM weights, refreshed lazily after weight updates
(gemm.py).

Returned log-probs are log pi(token) under the model's RAW distribution (temperature 1, no top-k /
top-p filtering): the quantity the trainer recomputes as the old-policy log-prob for the PPO ratio.
"""
from typing import Iterable, Optional

import torch

from superrl.hf_config import load_arch
from superrl.rollout.decoder import Decoder, PackedPrompts
from superrl.rollout.decoder_weights import DecoderWeights
from superrl.rollout.gemm import decode_rows
from superrl.rollout.hf_tensors import load_tensors, parse_dtype
from superrl.rollout.kv_cache import KVCache
from superrl.rollout.sampler import Sampler, sequence_seeds
from superrl.rollout.scheduler import Sequence, SlotScheduler
from superrl.rollout.shared_weights import SharedWeights, can_share
from superrl.rollout.types import Completion, RolloutEngine, SamplingParams

CACHE_ROUNDING = 64  # grow the KV cache in steps, so slightly longer prompts reuse it


class EmbeddedEngine(RolloutEngine):
    def __init__(self, model_dir: str, dtype: str = "float32", seed: int = 0, *,
                 device: Optional[str] = None, max_batch_size: Optional[int] = None,
                 max_prefill_tokens: int = 16384):
        """max_batch_size: KV-cache slots, i.e. sequences decoded together (default 64 on CPU,
        256 on GPU). max_prefill_tokens: bound on one prefill batch's padded token count."""
        self.config = load_arch(model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = parse_dtype(dtype)
        self.max_batch_size = max_batch_size or (256 if self.device.type == "cuda" else 64)
        self.max_prefill_tokens = max_prefill_tokens
        self.weights = DecoderWeights(self.config, self.dtype, self.device, shared=can_share(self.device))
        with torch.no_grad():
            self.weights.load(load_tensors(model_dir))
        self.decoder = Decoder(self.weights, self.max_batch_size)
        self.cache: Optional[KVCache] = None
        self._generator = torch.Generator().manual_seed(seed)  # seeds for calls without params.seed

    # ----------------------------------------------------------------- weights
    def state_dict(self) -> dict:
        """HF name -> live parameter tensor (views into the fused buffers the forward uses)."""
        return dict(self.weights.by_name)

    def shared_weights(self) -> Optional[SharedWeights]:
        """How trainer ranks on this host map the live parameters to write them directly (CPU; None
        on GPU). After such writes call `weights_written`."""
        return self.weights.shared()

    def weights_written(self) -> None:
        """Writes from other processes bypass the version counters that keep derived GEMM operands
        current (gemm.py): re-derive them all before the next forward."""
        self.decoder.gemm.invalidate()

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable) -> None:
        """Copy full HF-named tensors into the live parameters in place (no reallocation).

        A tied model also accepts `lm_head.weight` (it is the embedding). Unknown names and wrong
        shapes raise, naming the tensor; tensors before the bad one have already been copied.
        """
        self.weights.copy_from(named_tensors)

    # ----------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(self, prompt_token_ids: list, params: SamplingParams, *,
                 ignore_eos: bool = False, prompt_index_offset: int = 0) -> list:
        """Per prompt, `params.n` Completions. Stops on params.stop_token_ids and the model's eos
        (unless `ignore_eos`, used to force exact lengths in benchmarks). `prompt_index_offset`:
        index of the first prompt in a batch split over data-parallel ranks, so each slice samples
        exactly as the whole batch would in one call."""
        self._check_prompts(prompt_token_ids)
        sequences = self._make_sequences(prompt_token_ids, params, prompt_index_offset)
        slots = min(self.max_batch_size, len(sequences))
        longest = max(len(p) for p in prompt_token_ids) + params.max_tokens
        self._reserve(slots, longest)
        stop_ids = set(params.stop_token_ids or ()) | (set() if ignore_eos else set(self.config.eos_token_ids))
        self.decoder.refresh_weights()
        scheduler = SlotScheduler(sequences, slots, self.max_prefill_tokens)
        sampler = Sampler(params, self.config.vocab_size, self.device)
        while scheduler.has_work():
            admitted = scheduler.admit()
            if admitted:
                self._prefill(admitted, sampler, scheduler, stop_ids, params.max_tokens)
            if scheduler.running:
                self._decode(sampler, scheduler, stop_ids, params.max_tokens)
        return self._completions(sequences, len(prompt_token_ids), params.n)

    def _check_prompts(self, prompt_token_ids: list) -> None:
        if not prompt_token_ids:
            raise ValueError("generate: prompt_token_ids is empty")
        vocab = self.config.vocab_size
        for index, prompt in enumerate(prompt_token_ids):
            if len(prompt) == 0:
                raise ValueError(f"generate: prompt {index} has no tokens")
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise ValueError(f"generate: prompt {index} has a token id outside [0, {vocab})")

    def _make_sequences(self, prompt_token_ids: list, params: SamplingParams, prompt_index_offset: int) -> list:
        base_seed = params.seed if params.seed is not None else \
            int(torch.randint(0, 2**62, (1,), generator=self._generator))
        prompt_index = torch.arange(len(prompt_token_ids)).repeat_interleave(params.n)
        sample_index = torch.arange(params.n).repeat(len(prompt_token_ids))
        seeds = sequence_seeds(base_seed, prompt_index + prompt_index_offset, sample_index).tolist()
        return [Sequence(p, s, list(prompt_token_ids[p]), seed)
                for p, s, seed in zip(prompt_index.tolist(), sample_index.tolist(), seeds)]

    def _reserve(self, slots: int, positions: int) -> None:
        """(Re)allocate the KV cache only when this call needs more slots or positions."""
        self.decoder.reserve_positions(positions)
        old = self.cache
        if old is None or old.slots < slots or old.capacity < positions:
            capacity = -(-positions // CACHE_ROUNDING) * CACHE_ROUNDING
            if old is not None:  # grow, never shrink: alternating calls must not thrash
                slots, capacity = max(slots, old.slots), max(capacity, old.capacity)
            self.cache = old = None  # free the old cache before allocating the new one
            self.cache = KVCache(self.config, slots, capacity, self.dtype, self.device)

    def _prefill(self, admitted: list, sampler: Sampler, scheduler: SlotScheduler,
                 stop_ids: set, max_tokens: int) -> None:
        packed = PackedPrompts.build([seq.prompt for _, seq in admitted],
                                     [slot for slot, _ in admitted], self.device)
        logits = self.decoder.prefill(packed, self.cache)
        seeds = torch.tensor([seq.seed for _, seq in admitted], device=self.device)
        sampled = sampler(logits, seeds, torch.zeros_like(seeds))
        rows = [(row, slot, seq) for row, (slot, seq) in enumerate(admitted)]
        self._record(rows, sampled, scheduler, stop_ids, max_tokens)

    def _decode(self, sampler: Sampler, scheduler: SlotScheduler, stop_ids: set, max_tokens: int) -> None:
        moves = scheduler.compact()
        if moves:
            self.cache.move(*zip(*moves))
        rows = decode_rows(scheduler.rows, self.cache.slots)
        # Idle rows (free slots below the highest running one, and up to the row rounding of
        # `decode_rows`) decode a dummy token at position 0 of their own slot; their results are
        # ignored and a later prefill overwrites the entry.
        inputs = [0] * (4 * rows)  # flat: one torch.tensor call on a flat list is the cheap one
        for slot, seq in scheduler.running.items():
            inputs[4 * slot: 4 * slot + 4] = seq.tokens[-1], seq.next_position, seq.seed, len(seq.tokens)
        tokens, positions, seeds, steps = torch.tensor(inputs, device=self.device).view(rows, 4).T
        context = max(inputs[1::4]) + 1
        logits = self.decoder.decode(tokens, positions, context, self.cache)
        sampled = sampler(logits, seeds, steps)
        rows = [(slot, slot, seq) for slot, seq in scheduler.running.items()]
        self._record(rows, sampled, scheduler, stop_ids, max_tokens)

    @staticmethod
    def _record(rows: list, sampled: tuple, scheduler: SlotScheduler, stop_ids: set, max_tokens: int) -> None:
        """rows: (batch row, cache slot, Sequence). Append each row's sampled token; finished
        sequences give their slot back."""
        tokens, logprobs = sampled
        host_tokens, host_logprobs = torch.stack([tokens.double(), logprobs.double()]).tolist()  # one sync
        for row, slot, seq in rows:
            token = int(host_tokens[row])
            seq.tokens.append(token)
            seq.logprobs.append(host_logprobs[row])
            if token in stop_ids:
                seq.finish_reason = "stop"
            elif len(seq.tokens) >= max_tokens:
                seq.finish_reason = "length"
            if seq.finish_reason:
                scheduler.release(slot)

    @staticmethod
    def _completions(sequences: list, num_prompts: int, n: int) -> list:
        grouped = [[None] * n for _ in range(num_prompts)]
        for seq in sequences:
            grouped[seq.prompt_index][seq.sample_index] = Completion(seq.tokens, seq.logprobs, seq.finish_reason)
        return grouped
