"""The tensors of an HF-format model directory (*.safetensors) under their HF names, for the
embedded engine, which owns its forward pass and so needs no `transformers` model class. Its
architecture comes from the one HF config reader, `superrl.hf_config`."""
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_tensors(model_dir: str) -> dict:
    """All tensors of all *.safetensors shards in `model_dir`, keyed by their HF names."""
    shards = sorted(Path(model_dir).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    tensors = {}
    for shard in shards:
        tensors.update(load_file(str(shard), device="cpu"))
    return tensors


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]
