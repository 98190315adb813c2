"""What the megatron model provider (gpt.py) can build from a `ModelArch`. Apart from gpt.py, so
start-up can refuse a model before megatron is imported or any process group exists."""
from superrl.hf_config import ModelArch, UnsupportedModelError

TRAINABLE_ROPE_TYPES = ("default",)  # the rollout engine also runs linear and llama3 scaling


def check_trainable(arch: ModelArch) -> None:
    if arch.rope.rope_type not in TRAINABLE_ROPE_TYPES:
        raise UnsupportedModelError(f"{arch.name}: rope_type {arch.rope.rope_type!r} is not supported by the "
                                    f"megatron model provider (supported: {', '.join(TRAINABLE_ROPE_TYPES)})")
