"""What every weight-sync transport is, and the facts about a replica it is chosen by.

A *replica* is the TP x PP ranks that hold one copy of the model; its *owner* (tp_rank 0, pp_rank 0)
always holds a rollout engine, and other ranks may hold engines too (vLLM: every rank holds an
engine or an engine shard; each loads full HF tensors and takes its own shard). These *holders*
each get the whole model. Every rank of a replica builds the same `SyncSetup` (collectively,
once) and the same `Transport`, then calls `sync()` together after each optimizer step.
"""
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.hf_config import ModelArch
from superrl.rollout import RolloutEngine
from superrl.rollout.shared_weights import SharedWeights
from superrl.sync.plan import Bucket

SHM_DIR = "/dev/shm"  # Linux tmpfs: files here are RAM


@dataclass(frozen=True)
class Replica:
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    group: object  # the model-parallel (TP x PP) process group of this replica
    owner: int  # global rank of tp_rank 0 / pp_rank 0: the lowest of the group in megatron's order

    @property
    def is_owner(self) -> bool:
        return self.tp_rank == 0 and self.pp_rank == 0

    @classmethod
    def current(cls) -> "Replica":
        group = mpu.get_model_parallel_group()
        replica = cls(mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size(),
                      mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_world_size(),
                      group, min(dist.get_process_group_ranks(group)))
        if replica.is_owner != (dist.get_rank() == replica.owner):
            raise RuntimeError("weight sync expects the replica's lowest rank to be tp_rank 0 / pp_rank 0")
        return replica


@dataclass(frozen=True)
class SyncSetup:
    model: object  # this rank's megatron stage (DDP-wrapped or not)
    arch: ModelArch
    replica: Replica
    engine: Optional[RolloutEngine]  # on the holders only
    holders: tuple  # global ranks of the replica that hold an engine, the owner first
    bucket_bytes: int  # bucketed transports' limit (rollout.sync_bucket_mb)
    shared_weights: Optional[SharedWeights]  # the owner engine's, on every rank (None: it shares none)
    local_cpu: bool  # the whole replica on one host, weights in host memory

    @classmethod
    def build(cls, model, arch: ModelArch, engine: Optional[RolloutEngine], bucket_bytes: int) -> "SyncSetup":
        """Collective over the replica (every rank must call it, so every rank chooses alike)."""
        replica = Replica.current()
        if replica.is_owner and engine is None:
            raise ValueError(f"WeightSync: rank {dist.get_rank()} (tp_rank 0, pp_rank 0) needs an engine: "
                             "every data-parallel replica's first rank holds one")
        has_engine = [None] * dist.get_world_size(replica.group)
        dist.all_gather_object(has_engine, (dist.get_rank(), engine is not None), group=replica.group)
        holders = tuple(sorted(rank for rank, holds in has_engine if holds))
        handle = [engine.shared_weights() if engine is not None else None]
        dist.broadcast_object_list(handle, src=replica.owner, group=replica.group)
        hosts = [None] * replica.tp_size * replica.pp_size
        dist.all_gather_object(hosts, socket.gethostname(), group=replica.group)
        local_cpu = len(set(hosts)) == 1 and next(model.parameters()).device.type == "cpu"
        return cls(model, arch, replica, engine, holders, bucket_bytes, handle[0], local_cpu)

    @property
    def single_holder(self) -> bool:
        return len(self.holders) == 1

    @property
    def element_size(self) -> int:
        return next(self.model.parameters()).element_size()


class Transport(ABC):
    """Moves one replica's weights into its engine. `plan`: the buckets, in delivery order (empty
    when nothing is bucketed); `total_numel`: elements delivered per sync."""

    name: str
    plan: list
    total_numel: int

    @staticmethod
    @abstractmethod
    def unusable_reason(setup: SyncSetup) -> Optional[str]:
        """Why this transport cannot serve `setup`, or None when it can (the same on every rank)."""

    @abstractmethod
    def __init__(self, setup: SyncSetup):
        ...

    @abstractmethod
    def sync(self) -> None:
        """Collective over the replica: the engine holds the trainer's weights when it returns."""


def apply_bucket(engine: RolloutEngine, bucket: Bucket, flat: torch.Tensor) -> None:
    """On a holder: the engine copies the bucket's tensors out of views of the flat bucket."""
    engine.update_weights(bucket.unflatten(flat))


def shm_available() -> bool:
    return os.path.isdir(SHM_DIR)
