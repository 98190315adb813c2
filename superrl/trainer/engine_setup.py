"""Build the configured rollout engine (`rollout.engine`) on an engine-owning rank."""
from superrl.config import Config


def engine_dtype(config: Config) -> str:
    """`rollout.dtype`, by default the training dtype (`model.dtype`); weight sync casts into it."""
    return config.rollout.dtype or config.model.dtype


def build_engine(config: Config):
    if config.rollout.engine == "vllm":
        from superrl.rollout import VLLMEngine  # imported lazily: vLLM is the `gpu` extra

        return VLLMEngine(config.model.hf_dir, dtype=engine_dtype(config), seed=config.trainer.seed)
    from superrl.rollout import EmbeddedEngine

    return EmbeddedEngine(config.model.hf_dir, dtype=engine_dtype(config), seed=config.trainer.seed,
                          max_batch_size=config.rollout.max_batch_size)
