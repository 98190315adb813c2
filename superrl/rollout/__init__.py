"""Rollout engines behind one contract (`RolloutEngine`, types.py): the embedded pure-torch engine (default) and vLLM.

`VLLMEngine` is imported on first access only, so CPU installs without vLLM never import it.
"""
from superrl.rollout.embedded import EmbeddedEngine
from superrl.rollout.types import Completion, RolloutEngine, SamplingParams

__all__ = ["SamplingParams", "Completion", "RolloutEngine", "EmbeddedEngine", "VLLMEngine"]


def __getattr__(name):
    if name == "VLLMEngine":
        from superrl.rollout.vllm_engine import VLLMEngine
        return VLLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
