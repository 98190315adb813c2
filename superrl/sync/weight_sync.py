"""Weight sync: the trainer's megatron shards -> full HF-named tensors -> the rollout engine.

    sync = WeightSync(state.model, arch, engine_or_none, bucket_mb=config.rollout.sync_bucket_mb)
    stats = sync.sync()  # every trainer rank, after each optimizer step
    log(stats.metrics())  # sync/seconds, sync/bytes, sync/gbps

Topology: the replica's rank with tp_rank == 0 and pp_rank == 0 (the *owner*) always holds an
engine; other ranks may (vLLM places an engine or engine shard on every rank) or pass
`engine=None`. Every holder gets full HF tensors. Each PP stage exports its own
layers, named with global layer indices, through the shared HF<->megatron mapping. The bucketed
transports deliver them to the owner in the flat buckets of a plan that every rank derives from
the architecture alone (plan.py), so no metadata is exchanged, and the owner applies bucket by
bucket: `engine.update_weights` on views into the flat bucket. The `direct` transport instead
writes every part into the engine's own parameters. Either way the engine holds full tensors, so
its own tensor parallelism (e.g. vLLM's) may differ from the trainer's.

Three transports move the bytes (the same split as slime's colocated / distributed weight update).
Each implements `transport.Transport`; `choose_transport` picks one, in this order unless told:
* `direct` (CPU, the whole replica on one host, an engine whose `shared_weights()` other
  processes can map: `EmbeddedEngine`): every rank writes its parts straight into the engine's
  parameters (direct.py). Nothing is bucketed.
* `shared_memory` (CPU, one host, any other engine): TP ranks write their own slices straight into
  a bucket shared with the owner, which applies it (shared_memory.py).
* `collective` (anything else: GPU/NCCL, multi-node): TP parts gathered point-to-point into the
  bucket, then buckets sent point-to-point from each stage to the owner, or broadcast to every
  holder when there are several (collective.py). The only one for several holders.
"""
import time
from dataclasses import dataclass

import torch

from superrl.hf_config import ModelArch
from superrl.rollout import RolloutEngine
from superrl.sync.collective import CollectiveTransport
from superrl.sync.direct import DirectTransport
from superrl.sync.shared_memory import SharedMemoryTransport
from superrl.sync.transport import SyncSetup, Transport

MB = 2**20
TRANSPORTS = {t.name: t for t in (DirectTransport, SharedMemoryTransport, CollectiveTransport)}  # auto order


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


def choose_transport(setup: SyncSetup, transport: str) -> type:
    """`transport`: auto (the first usable of TRANSPORTS) or one of its names."""
    if transport == "auto":
        return next(t for t in TRANSPORTS.values() if t.unusable_reason(setup) is None)
    if transport not in TRANSPORTS:
        raise ValueError(f"WeightSync: unknown transport {transport!r}; choose auto, {', '.join(TRANSPORTS)}")
    reason = TRANSPORTS[transport].unusable_reason(setup)
    if reason is not None:
        raise ValueError(f"WeightSync: transport {transport!r} {reason}")
    return TRANSPORTS[transport]


class WeightSync:
    """Collective: every trainer rank builds one (same arguments) and calls `sync()` together.

    `engine`: this rank's rollout engine (always one on the replica's owner, tp_rank 0 / pp_rank 0),
    or None. `update_weights` gets views into a bucket that is reused afterwards: it must copy.
    `bucket_mb`: config `rollout.sync_bucket_mb` (bucketed transports). `transport`: auto | direct |
    shared_memory | collective.
    """

    def __init__(self, model, arch: ModelArch, engine: RolloutEngine = None, bucket_mb: float = 512,
                 transport: str = "auto"):
        setup = SyncSetup.build(model, arch, engine, int(bucket_mb * MB))
        self._transport: Transport = choose_transport(setup, transport)(setup)
        self.transport = self._transport.name
        self.plan = self._transport.plan
        self.total_bytes = self._transport.total_numel * setup.element_size

    @torch.no_grad()
    def sync(self) -> SyncStats:
        start = time.perf_counter()
        self._transport.sync()
        return SyncStats(time.perf_counter() - start, self.total_bytes, len(self.plan))
