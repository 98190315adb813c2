"""Continuous batching bookkeeping: which sequence runs in which KV-cache slot.

Finished sequences give their slot back at once and waiting ones are admitted into it on the next
step, so the decode batch stays full while any work is left. Slots are handed out lowest-first and
running sequences are compacted downwards once the queue is empty, because decode runs over cache
rows [0, highest running slot] and idle rows in that range still cost compute.
"""
import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Sequence:
    prompt_index: int
    sample_index: int
    prompt: list
    seed: int
    tokens: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: Optional[str] = None

    @property
    def next_position(self) -> int:
        """Cache position of the last sampled token, i.e. the next decode input."""
        return len(self.prompt) + len(self.tokens) - 1


class SlotScheduler:
    def __init__(self, sequences: list, slots: int, max_prefill_tokens: int):
        self.waiting = deque(sequences)
        self.running: dict = {}  # slot -> Sequence
        self.free = list(range(slots))  # a heap: lowest slot first
        self.max_prefill_tokens = max_prefill_tokens

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def rows(self) -> int:
        """Decode batch size: cache rows [0, highest running slot]."""
        return max(self.running) + 1 if self.running else 0

    def admit(self) -> list:
        """Move waiting sequences into free slots -> [(slot, Sequence)] to prefill together.

        A prefill batch is padded to its longest prompt; `max_prefill_tokens` bounds that padded
        size (at least one sequence is always admitted).
        """
        admitted, longest = [], 0
        while self.waiting and self.free:
            longest_if_added = max(longest, len(self.waiting[0].prompt))
            if admitted and longest_if_added * (len(admitted) + 1) > self.max_prefill_tokens:
                break
            longest = longest_if_added
            slot, sequence = heapq.heappop(self.free), self.waiting.popleft()
            self.running[slot] = sequence
            admitted.append((slot, sequence))
        return admitted

    def release(self, slot: int) -> None:
        del self.running[slot]
        heapq.heappush(self.free, slot)

    def compact(self) -> list:
        """Once nothing waits, move the highest running sequences into lower free slots when that
        at least halves the decode rows -> [(source slot, destination slot)] for the KV cache."""
        if self.waiting or not self.running or len(self.running) > self.rows // 2:
            return []
        moves = []
        for destination in range(len(self.running)):
            if destination not in self.running:
                source = max(self.running)
                self.running[destination] = self.running.pop(source)
                moves.append((source, destination))
        self.free = [slot for slot in range(len(self.free) + len(self.running)) if slot not in self.running]
        heapq.heapify(self.free)
        return moves
