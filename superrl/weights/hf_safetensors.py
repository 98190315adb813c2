"""Lazy reading and sharded writing of HF safetensors checkpoints.

Tensors are read one at a time (safetensors mmaps the file), so converting a model never holds
more than the tensors being written.
"""
import json
import os
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from superrl.hf_config import ModelArch
from superrl.weights.checkpoint_manifest import CheckpointError
from superrl.weights import mapping

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class HFCheckpointReader:
    """`reader(name)` returns one tensor; names not in the checkpoint raise CheckpointError."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        index = os.path.join(hf_dir, INDEX_FILE)
        if os.path.isfile(index):
            with open(index) as f:
                self.file_of = json.load(f)["weight_map"]
        elif os.path.isfile(os.path.join(hf_dir, SINGLE_FILE)):
            with safe_open(os.path.join(hf_dir, SINGLE_FILE), "pt") as f:
                self.file_of = {k: SINGLE_FILE for k in f.keys()}
        else:
            raise CheckpointError(f"{hf_dir!r} has neither {SINGLE_FILE} nor {INDEX_FILE}")
        self._handles = {}

    def names(self) -> set:
        return set(self.file_of)

    def __call__(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

    def shape(self, name: str) -> tuple:
        """Read from the file header only; the tensor's data is not touched."""
        return tuple(self._handle(name).get_slice(name).get_shape())

    def _handle(self, name: str):
        if name not in self.file_of:
            raise CheckpointError(f"{self.hf_dir}: missing tensor {name!r}")
        file = self.file_of[name]
        if file not in self._handles:
            self._handles[file] = safe_open(os.path.join(self.hf_dir, file), "pt")
        return self._handles[file]


def check_tensor_names(found: set, expected: set, where: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing:
        raise CheckpointError(f"{where}: missing tensor(s) {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensor(s) {', '.join(unexpected[:5])}"
                              + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))


def check_hf_checkpoint(reader: HFCheckpointReader, arch: ModelArch) -> None:
    """Every tensor the architecture needs is there, with the shape its config promises, and no other."""
    found = reader.names() - {"lm_head.weight"} if arch.tied_embeddings else reader.names()
    check_tensor_names(found, mapping.all_hf_names(arch), reader.hf_dir)
    for name, shape in mapping.hf_tensor_shapes(arch).items():
        found_shape = reader.shape(name)
        if found_shape != shape:
            raise CheckpointError(f"{reader.hf_dir}: tensor {name!r} has shape {found_shape}, "
                                  f"expected {shape} from config.json")


def write_sharded(named_tensors: Iterable, out_dir: str, max_shard_bytes: int = 2 << 30) -> list:
    """Stream (name, tensor) pairs into safetensors shards of at most `max_shard_bytes`.

    One shard -> `model.safetensors`; several -> numbered files plus the HF index file.
    """
    os.makedirs(out_dir, exist_ok=True)
    shards, current, size = [], {}, 0

    def flush():
        nonlocal current, size
        if current:
            path = os.path.join(out_dir, f"model-{len(shards) + 1:05d}.safetensors")
            save_file(current, path, metadata={"format": "pt"})
            shards.append((path, list(current)))
            current, size = {}, 0

    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            flush()
        current[name] = tensor.contiguous()
        size += nbytes
    flush()
    return _name_shards(shards, out_dir)


def _name_shards(shards: list, out_dir: str) -> list:
    if len(shards) == 1:
        final = os.path.join(out_dir, SINGLE_FILE)
        os.replace(shards[0][0], final)
        return [final]
    total = len(shards)
    weight_map, paths = {}, []
    for i, (path, names) in enumerate(shards, start=1):
        final = os.path.join(out_dir, f"model-{i:05d}-of-{total:05d}.safetensors")
        os.replace(path, final)
        paths.append(final)
        weight_map.update({n: os.path.basename(final) for n in names})
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    return paths
