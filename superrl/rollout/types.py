"""The rollout engine contract, shared by the embedded and the vLLM engines: what the trainer
(generate) and weight sync (update_weights, or in-place writes to shared weights) need."""
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from superrl.rollout.shared_weights import SharedWeights


@dataclass
class SamplingParams:
    """Field names follow vLLM's SamplingParams so configs and code carry over unchanged."""
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: disabled, as in vLLM
    max_tokens: int = 16
    stop_token_ids: list = field(default_factory=list)
    seed: Optional[int] = None
    logprobs: Optional[int] = None  # return sampled-token log-probs when not None (we always do)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Completion:
    token_ids: list
    logprobs: list  # log pi(token) under the raw (temperature-1, unfiltered) distribution
    finish_reason: str  # "stop" (stop token sampled, included in token_ids) or "length"


class RolloutEngine(ABC):
    @abstractmethod
    def generate(self, prompt_token_ids: list, params: SamplingParams, *,
                 prompt_index_offset: int = 0) -> list:
        """Return, per prompt, `params.n` Completions. A seeded call's randomness depends on
        (seed, prompt_index_offset + prompt index, sample index) only."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load full (unsharded) tensors named as in the HF checkpoint."""

    def shared_weights(self) -> Optional[SharedWeights]:
        """How other processes on this host map the live parameters to write them in place, or
        None (the default): weight sync then streams tensors through `update_weights`. An engine
        that returns a handle also implements `state_dict` and gets `weights_written` calls."""
        return None

    def state_dict(self) -> dict:
        """HF name -> live parameter tensor (the views `shared_weights` describes)."""
        raise NotImplementedError(f"{type(self).__name__} shares no weights: it has no live state_dict")

    def weights_written(self) -> None:
        """Other processes have written the shared weights in place: refresh whatever the engine
        derived from them before the next forward."""

    def sleep(self) -> None:
        """Release what the engine holds on the accelerator while the trainer runs (colocated
        training); the default engine holds nothing it could release."""

    def wake_up(self) -> None:
        """Undo `sleep`, before the next weight update and generate."""

    def close(self, abandon: bool = False) -> None:
        """Release the engine. `abandon`: after a failure, skip any teardown that waits for peers."""
