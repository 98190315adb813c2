"""Refuse a distributed checkpoint whose pickled files would run code when loaded.

torch.distributed.checkpoint reads `.metadata` with plain `pickle.load`, so a crafted checkpoint
could execute anything on every rank. Before dist_checkpointing touches a checkpoint we unpickle
that file once with an allow-list of the classes torch writes there (its checkpoint dataclasses,
torch.Size, dtypes, layouts); anything else is a CheckpointError naming the file and the global.
megatron's `common.pt` is loaded here once with `weights_only=True` (megatron relies on torch's
default), so a refusal names the file. `*.distcp` files are raw tensor bytes.
"""
import os
import pickle

import torch

from superrl.weights.checkpoint_manifest import CheckpointError

DCP_METADATA_FILE = ".metadata"
COMMON_STATE_FILE = "common.pt"
_ALLOWED_MODULE_PREFIX = "torch.distributed.checkpoint."
_ALLOWED_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice")}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module.startswith(_ALLOWED_MODULE_PREFIX) or (module, name) in _ALLOWED_GLOBALS
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        raise CheckpointError(f"{self.path}: refusing to unpickle {module}.{name} (not a torch checkpoint "
                              "metadata type): the file may be crafted to run code")


def check_pickled_files(dist_dir: str) -> None:
    path = os.path.join(dist_dir, DCP_METADATA_FILE)
    try:
        with open(path, "rb") as f:
            _AllowListUnpickler(f, path).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable distributed-checkpoint metadata ({e})") from e
    load_plain_data(os.path.join(dist_dir, COMMON_STATE_FILE))


def load_plain_data(path: str):
    """torch.load of tensors and plain containers only (never arbitrary objects), naming the file."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused, holds more than tensors and plain data ({e})") from e
