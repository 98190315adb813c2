"""Build the configured rollout engine (`rollout.engine`) with its placement and memory settings."""
from superrl.config import Config, engine_tensor_parallel_size


def engine_dtype(config: Config) -> str:
    """`rollout.dtype`, by default the training dtype (`model.dtype`); weight sync casts into it."""
    return config.rollout.dtype or config.model.dtype


def engine_max_model_len(config: Config) -> int:
    """`rollout.max_model_len`, by default the longest row a step makes: the engine's KV cache is
    sized for this context, not for the model's max_position_embeddings (131072 for Qwen2.5)."""
    return config.rollout.max_model_len or config.data.max_prompt_len + config.rollout.max_tokens


def build_engine(config: Config):
    if config.rollout.engine == "vllm":
        from superrl.rollout import VLLMEngine  # imported lazily: vLLM is the `gpu` extra

        return VLLMEngine(config.model.hf_dir, dtype=engine_dtype(config), seed=config.trainer.seed,
                          tensor_parallel_size=engine_tensor_parallel_size(config),
                          gpu_memory_utilization=config.rollout.gpu_memory_utilization,
                          max_model_len=engine_max_model_len(config))
    from superrl.rollout import EmbeddedEngine

    return EmbeddedEngine(config.model.hf_dir, dtype=engine_dtype(config), seed=config.trainer.seed,
                          max_batch_size=config.rollout.max_batch_size)
