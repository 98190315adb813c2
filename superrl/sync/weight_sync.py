"""Weight sync: the trainer's megatron shards -> full HF-named tensors -> the rollout engine.

    sync = WeightSync(state.model, arch, engine if owner else None, bucket_mb=config.rollout.sync_bucket_mb)
    stats = sync.sync()  # every trainer rank, after each optimizer step
    log(stats.metrics())  # sync/seconds, sync/bytes, sync/gbps

Topology: one engine per data-parallel replica, on the replica's rank with tp_rank == 0 and
pp_rank == 0 (the *owner*); every other rank passes `engine=None`. Each PP stage exports its own
layers, named with global layer indices, through the shared HF<->megatron mapping. The bucketed
transports deliver them to the owner in the flat buckets of a plan that every rank derives from
the architecture alone (plan.py), so no metadata is exchanged, and the owner applies bucket by
bucket: `engine.update_weights` on views into the flat bucket. The `direct` transport instead
writes every part into the engine's own parameters. Either way the engine holds full tensors, so
its own tensor parallelism (e.g. vLLM's) may differ from the trainer's.

Three transports move the bytes (the same split as slime's colocated / distributed weight update),
auto-selected in this order:
* `direct` (CPU, the whole replica on one host, an engine whose weights other processes can map:
  `EmbeddedEngine`): every rank writes its parts straight into the engine's parameters
  (direct.py). Nothing is bucketed.
* `shared_memory` (CPU, one host, any other engine): TP ranks write their own slices straight into
  a bucket shared with the owner, which applies it (shared_memory.py).
* `collective` (anything else: GPU/NCCL, multi-node): TP parts gathered point-to-point into the
  bucket, then buckets sent point-to-point from each stage to the owner (collective.py).
"""
import os
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.hf_config import ModelArch
from superrl.sync.collective import CollectiveTransport
from superrl.sync.direct import DirectTransport
from superrl.sync.plan import Bucket
from superrl.sync.shared_memory import SHM_DIR, SharedMemoryTransport

MB = 2**20
BUCKETED = {"collective": CollectiveTransport, "shared_memory": SharedMemoryTransport}
TRANSPORTS = ("direct", *BUCKETED)


@dataclass(frozen=True)
class SyncStats:
    seconds: float  # wall time of sync() on this rank (on the owner: until the last bucket is applied)
    bytes: int  # bytes of full HF tensors delivered to the engine
    buckets: int

    @property
    def gbps(self) -> float:
        """Gigabytes (not gigabits) per second."""
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")

    def metrics(self) -> dict:
        return {"sync/seconds": self.seconds, "sync/bytes": self.bytes, "sync/gbps": self.gbps}


def replica_on_one_host() -> bool:
    hosts = [None] * dist.get_world_size(mpu.get_model_parallel_group())
    dist.all_gather_object(hosts, socket.gethostname(), group=mpu.get_model_parallel_group())
    return len(set(hosts)) == 1


def owner_shared_weights(engine):
    """Collective over the replica: its owner's `engine.shared_weights()` (None when the engine
    offers none), on every rank."""
    group = mpu.get_model_parallel_group()
    handle = [getattr(engine, "shared_weights", lambda: None)() if engine is not None else None]
    dist.broadcast_object_list(handle, src=min(dist.get_process_group_ranks(group)), group=group)
    return handle[0]


def choose_transport(model, transport: str, shared_weights) -> str:
    """shared_weights: `owner_shared_weights(engine)`."""
    if transport not in ("auto", *TRANSPORTS):
        raise ValueError(f"WeightSync: unknown transport {transport!r}; choose auto, {', '.join(TRANSPORTS)}")
    # Every rank must take the same branch: the checks below are collective, so they run everywhere.
    shares = shared_weights is not None
    local = replica_on_one_host() and next(model.parameters()).device.type == "cpu"
    if transport == "direct" and not (shares and local):
        raise ValueError("WeightSync: transport 'direct' needs CPU weights, the replica on one host and an "
                         "engine whose weights other processes can map (EmbeddedEngine on CPU, Linux)")
    if transport != "auto":
        return transport
    if not local:
        return "collective"
    return "direct" if shares else ("shared_memory" if os.path.isdir(SHM_DIR) else "collective")


class WeightSync:
    """Collective: every trainer rank builds one (same arguments) and calls `sync()` together.

    `engine`: the rollout engine on this replica's owner rank (tp_rank 0, pp_rank 0), None on every
    other rank. `update_weights` gets views into a bucket that is reused afterwards: it must copy.
    `bucket_mb`: config `rollout.sync_bucket_mb` (bucketed transports). `transport`: auto | direct |
    shared_memory | collective.
    """

    def __init__(self, model, arch: ModelArch, engine=None, bucket_mb: float = 512, transport: str = "auto"):
        tp_rank, pp_rank = mpu.get_tensor_model_parallel_rank(), mpu.get_pipeline_model_parallel_rank()
        is_owner = tp_rank == 0 and pp_rank == 0
        if is_owner != (engine is not None):
            raise ValueError(f"WeightSync: rank {dist.get_rank()} (tp_rank {tp_rank}, pp_rank {pp_rank}) "
                             f"{'needs' if is_owner else 'must not have'} an engine: the engine lives on "
                             "tp_rank 0 / pp_rank 0 of each data-parallel replica")
        self.engine = engine
        shared_weights = owner_shared_weights(engine)
        self.transport = choose_transport(model, transport, shared_weights)
        if self.transport == "direct":
            self._transport = DirectTransport(model, arch, engine, shared_weights)
            total_numel = self._transport.total_numel
        else:
            self._transport = BUCKETED[self.transport](model, arch, int(bucket_mb * MB))
            total_numel = sum(b.numel for b in self._transport.plan)
        self.plan = self._transport.plan
        self.total_bytes = total_numel * next(model.parameters()).element_size()

    @torch.no_grad()
    def sync(self) -> SyncStats:
        start = time.perf_counter()
        self._transport.sync(self._apply)
        return SyncStats(time.perf_counter() - start, self.total_bytes, len(self.plan))

    def _apply(self, bucket: Bucket, flat: torch.Tensor) -> None:
        """On the owner: the engine copies the bucket's tensors out of views of the flat bucket."""
        self.engine.update_weights(bucket.unflatten(flat))
