"""Per-file sizes and CRC-32s of a checkpoint directory: a truncated or corrupted file is named on
load instead of surfacing as an unpickling or shape error deep inside dist_checkpointing.

Both hashing (at save) and checking (at load) split the files over the ranks of the job, so a
large checkpoint costs each rank only its share of the reads. Without torch.distributed (or with
one rank) one process does all of it.
"""
import os
import zlib

import torch.distributed as dist


class CheckpointError(ValueError):
    """A checkpoint (HF or megatron) that is missing, damaged, or from another model."""


_READ_CHUNK = 16 * 2**20


def _relative_files(directory: str, exclude: str) -> list:
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), directory)
            if rel != exclude:
                found.append(rel)
    return sorted(found)


def _crc32(path: str) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _this_ranks_share(items: list) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return items
    return items[dist.get_rank()::dist.get_world_size()]


def _merge_from_all_ranks(local: list) -> list:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return [item for part in gathered for item in part]


def build_manifest(directory: str, exclude: str) -> dict:
    """Collective when distributed. {relative path: {"bytes": n, "crc32": hex}} of every file but
    `exclude` (the metadata file that will hold the manifest)."""
    mine = [(rel, {"bytes": os.path.getsize(os.path.join(directory, rel)),
                   "crc32": _crc32(os.path.join(directory, rel))})
            for rel in _this_ranks_share(_relative_files(directory, exclude))]
    return dict(sorted(_merge_from_all_ranks(mine)))


def _file_problem(directory: str, rel: str, expected: dict):
    path = os.path.join(directory, rel)
    if not os.path.isfile(path):
        return f"{path}: missing"
    size = os.path.getsize(path)
    if size != expected["bytes"]:
        return f"{path}: {size} bytes, the manifest says {expected['bytes']} (truncated or overwritten)"
    crc = _crc32(path)
    if crc != expected["crc32"]:
        return f"{path}: CRC-32 {crc}, the manifest says {expected['crc32']} (corrupted)"
    return None


def verify_manifest(directory: str, manifest: dict) -> None:
    """Collective when distributed. Raise CheckpointError naming every missing, truncated or
    corrupted file (every rank raises the same error)."""
    mine = [_file_problem(directory, rel, expected)
            for rel, expected in _this_ranks_share(sorted(manifest.items()))]
    problems = sorted(p for p in _merge_from_all_ranks(mine) if p)
    if problems:
        raise CheckpointError(f"checkpoint {directory!r} is damaged: " + "; ".join(problems))
