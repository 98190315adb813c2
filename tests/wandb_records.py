"""Reads an offline wandb run (RUN/run-<id>.wandb) independently of the wandb SDK's run code:
wandb 0.31 dropped its Python reader, so this parses the file's LevelDB-log framing (a ':W&B'
header, 32 KiB blocks of [crc32, length, type] chunks) and decodes each record with wandb's
published protobuf schema (wandb.proto.wandb_internal_pb2.Record)."""
import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK = struct.Struct("<IHB")  # crc32, length, chunk type
BLOCK = 32768
FULL, LAST = 1, 4  # chunk types that end a record (FIRST = 2 and MIDDLE = 3 continue one)


def records(path) -> list:
    data = Path(path).read_bytes()
    assert HEADER.unpack_from(data) == (b":W&B", 0xBEE1, 0), f"{path} is not a wandb run file"
    pos, parts, out = HEADER.size, [], []
    while pos + CHUNK.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK.size:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        parts.append(data[pos + CHUNK.size:pos + CHUNK.size + length])
        pos += CHUNK.size + length
        if kind in (FULL, LAST):
            out.append(wandb_internal_pb2.Record.FromString(b"".join(parts)))
            parts = []
    return out


def _items(entries) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in entries}


class OfflineRun:
    """The run record (id, project, name, config) and the history rows of one offline run dir."""

    def __init__(self, run_dir):
        (path,) = Path(run_dir).glob("run-*.wandb")
        found = records(path)
        (run,) = [r.run for r in found if r.WhichOneof("record_type") == "run"]
        self.id, self.project, self.name = run.run_id, run.project, run.display_name
        self.config = _items(run.config.update)
        self.history = [_items(r.history.item) for r in found if r.WhichOneof("record_type") == "history"]
