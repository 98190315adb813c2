"""Build the configured rollout engine (`rollout.engine`) with its placement and memory settings."""
import contextlib
import faulthandler
import os
import sys
import threading

from superrl.config import Config, engine_tensor_parallel_size


def engine_dtype(config: Config) -> str:
    """`rollout.dtype`, by default the training dtype (`model.dtype`); weight sync casts into it."""
    return config.rollout.dtype or config.model.dtype


def engine_max_model_len(config: Config) -> int:
    """`rollout.max_model_len`, by default the longest row a step makes: the engine's KV cache is
    sized for this context, not for the model's max_position_embeddings (131072 for Qwen2.5)."""
    return config.rollout.max_model_len or config.data.max_prompt_len + config.rollout.max_tokens


@contextlib.contextmanager
def bounded(seconds: float, what: str):
    """Ends the process (exit code 1, with every thread's stack) if the block outlasts `seconds`:
    a collective start-up or teardown that a peer never joins would otherwise wait forever."""
    def expire():
        print(f"superrl: {what} did not finish within {seconds:.0f} s (trainer.dist_timeout_s); "
              "stacks follow", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def build_engine(config: Config):
    """Collective for vLLM: every rank of the world builds its engine (shard) together."""
    if config.rollout.engine == "vllm":
        from superrl.rollout import VLLMEngine  # imported lazily: vLLM is the `gpu` extra

        with bounded(config.trainer.dist_timeout_s, "vLLM engine start-up"):
            # external_launcher: vLLM adopts the trainer's world and builds its TP groups from it
            # on every rank, instead of spawning workers of its own.
            return VLLMEngine(config.model.hf_dir, dtype=engine_dtype(config), seed=config.trainer.seed,
                              tensor_parallel_size=engine_tensor_parallel_size(config),
                              gpu_memory_utilization=config.rollout.gpu_memory_utilization,
                              max_model_len=engine_max_model_len(config),
                              distributed_executor_backend="external_launcher")
    from superrl.rollout import EmbeddedEngine

    return EmbeddedEngine(config.model.hf_dir, dtype=engine_dtype(config), seed=config.trainer.seed,
                          max_batch_size=config.rollout.max_batch_size)
