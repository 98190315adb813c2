"""Deterministic, resumable batches of prompts for the training loop.

Every epoch visits the examples in a fresh permutation drawn from ``(seed, epoch)``; batches hold
``prompts_per_step`` examples and the tail of an epoch that cannot fill a batch is dropped (the next
epoch's reshuffle covers it). The loader is endless: the trainer stops it by step count.
``state_dict()`` records (epoch, position); loading it into a loader over the same examples and
seed continues with exactly the batches the saved loader would have produced. Every data-parallel
rank builds the same loader, so all see the same global batch.
"""
from collections.abc import Sequence

import numpy as np


class PromptDataLoader:
    def __init__(self, examples: Sequence, prompts_per_step: int, seed: int = 0):
        if not 0 < prompts_per_step <= len(examples):
            raise ValueError(f"prompts_per_step must be in 1..{len(examples)} (the number of examples), "
                             f"got {prompts_per_step}")
        self._examples, self._batch_size, self._seed = examples, prompts_per_step, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def __iter__(self):
        return self

    def __next__(self) -> list:
        if self.position + self._batch_size > len(self._examples):
            self._start_epoch(self.epoch + 1)
        indices = self._order[self.position:self.position + self._batch_size]
        self.position += self._batch_size
        return [self._examples[index] for index in indices]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self._seed,
                "num_examples": len(self._examples)}

    def load_state_dict(self, state: dict) -> None:
        saved = (state["seed"], state["num_examples"])
        if saved != (self._seed, len(self._examples)):
            raise ValueError(f"data loader state is for seed {saved[0]} over {saved[1]} examples, but this "
                             f"loader has seed {self._seed} over {len(self._examples)}: resuming would not "
                             f"replay the same order")
        self._start_epoch(state["epoch"])
        self.position = state["position"]

    def _start_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self._seed, epoch]).permutation(len(self._examples))
