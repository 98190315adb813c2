"""Functions that vLLM runs inside its workers through `LLM.collective_rpc`.

They live in an importable module (not `__main__`) because vLLM pickles a callable by reference
when it sends it to a worker process; the worker then imports this module. Each takes the vLLM
worker as `self`. Tensors cannot travel as `collective_rpc` arguments (they arrive as lists), so
weights are handed over as a safetensors file that every worker reads.
"""
from safetensors import safe_open


def iter_safetensors(path: str):
    """(name, tensor) pairs of a safetensors file, one tensor in memory at a time."""
    with safe_open(path, framework="pt", device="cpu") as handle:
        for name in handle.keys():
            yield name, handle.get_tensor(name)


def reload_weights_from_safetensors(self, path: str) -> None:
    """Load HF-named full tensors in place. `reload_weights` runs vLLM's own weight loaders (TP
    sharding, QKV / gate-up fusion, CPU repacking); `model.load_weights` alone skips the repacking."""
    self.reload_weights(weights_iterator=iter_safetensors(path), is_checkpoint_format=True)


def packed_modules_mapping(self) -> dict:
    """The model's fused-module table, e.g. {"qkv_proj": ["q_proj", "k_proj", "v_proj"], ...}."""
    model = self.model_runner.get_model()
    return {fused: list(parts) for fused, parts in getattr(model, "packed_modules_mapping", {}).items()}
