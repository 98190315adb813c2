"""Weight sync: the trainer's megatron shards -> full HF-named tensors -> the rollout engine, in buckets.

Topology (one engine per data-parallel replica):

* The engine lives on the replica's rank with tp_rank == 0 and pp_rank == 0, the *owner*; every
  other rank passes `engine=None`.
* Each PP stage exports its own layers, named with global layer indices, through the shared
  mapping (`export_hf_weights`): a parameter's TP shards are all-gathered inside the stage's TP
  group and resharded into full HF tensors. Only the stage's tp_rank-0 rank uses them; its TP peers
  take part in the all-gathers and drop the result.
* Stage 0's tensors are packed into flat buckets on the owner itself. Stage s > 0 packs on its
  tp_rank-0 rank and sends each flat bucket point-to-point to the owner over their PP group (both
  are tp_rank 0 of the same replica, so they share that group).
* The owner applies bucket by bucket: `engine.update_weights` on views into the flat bucket.

Every rank derives the same bucket plan from the architecture (see plan.py), so no metadata is
exchanged: a bucket on the wire is just its flat tensor. The engine receives full tensors, so its
own tensor parallelism (e.g. vLLM's) may differ from the trainer's.

Memory: each packing or receiving rank holds one reusable flat buffer of at most `bucket_mb`
while it syncs, plus the reshard of the one parameter being exported (at TP > 1 the all-gathered
shards and their HF concatenation briefly coexist). A tensor larger than the bucket travels alone,
as itself, never copied into a second bucket-sized buffer.
"""
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.models.architecture import ModelArch
from superrl.sync.plan import Bucket, build_plan, packing_capacity
from superrl.weights.load import export_hf_weights

MB = 2**20


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


def apply_to_engine(engine, bucket: Bucket, flat: torch.Tensor) -> None:
    """In-process delivery: the engine copies out of views of the flat bucket."""
    engine.update_weights(bucket.unflatten(flat))


class WeightSync:
    """Collective: every trainer rank builds one and calls `sync()` after each optimizer step.

    `engine`: the rollout engine on this replica's owner rank (tp_rank 0, pp_rank 0), None on every
    other rank. An object with `apply_bucket(bucket, flat)` (e.g. a sender to an engine in another
    process) is used as is; anything else is treated as an in-process RolloutEngine.
    """

    def __init__(self, model, arch: ModelArch, engine=None, bucket_mb: float = 64):
        self.model, self.arch = model, arch
        self.tp_rank = mpu.get_tensor_model_parallel_rank()
        self.pp_rank = mpu.get_pipeline_model_parallel_rank()
        self.is_owner = self.tp_rank == 0 and self.pp_rank == 0
        if self.is_owner != (engine is not None):
            raise ValueError(f"WeightSync: rank {dist.get_rank()} (tp_rank {self.tp_rank}, pp_rank "
                             f"{self.pp_rank}) {'needs' if self.is_owner else 'must not have'} an engine: "
                             "the engine lives on tp_rank 0 / pp_rank 0 of each data-parallel replica")
        self.apply_bucket = getattr(engine, "apply_bucket", None) or (
            lambda bucket, flat: apply_to_engine(engine, bucket, flat))
        self.pp_group = mpu.get_pipeline_model_parallel_group()
        self.stage_ranks = dist.get_process_group_ranks(self.pp_group)  # global rank of each stage
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.plan = build_plan(arch, len(self.stage_ranks), int(bucket_mb * MB), param.element_size())
        self.total_bytes = sum(b.numel for b in self.plan) * param.element_size()

    @torch.no_grad()
    def sync(self) -> SyncStats:
        start = time.perf_counter()
        exported = export_hf_weights(self.model, self.arch)
        if self.is_owner:
            self._receive_and_apply(exported)
        elif self.tp_rank == 0:
            self._pack_and_send(exported)
        else:
            for _ in exported:  # TP peers: take part in the all-gathers only
                pass
        return SyncStats(time.perf_counter() - start, self.total_bytes, len(self.plan))

    def _buffer(self) -> torch.Tensor:
        return torch.empty(packing_capacity(self.plan), dtype=self.dtype, device=self.device)

    def _receive_and_apply(self, exported) -> None:
        buffer = self._buffer()
        for bucket in self.plan:
            if bucket.stage == 0:
                flat = bucket.pack(exported, buffer)
            else:
                flat = buffer[:bucket.numel] if bucket.numel <= buffer.numel() else \
                    torch.empty(bucket.numel, dtype=self.dtype, device=self.device)
                dist.recv(flat, src=self.stage_ranks[bucket.stage], group=self.pp_group)
            self.apply_bucket(bucket, flat)
            del flat  # a solo bucket is the exported tensor itself: free it before the next export

    def _pack_and_send(self, exported) -> None:
        buffer = self._buffer()
        owner = self.stage_ranks[0]
        for bucket in self.plan:
            if bucket.stage == self.pp_rank:
                # Blocking send: the buffer is refilled only once the owner has this bucket.
                dist.send(bucket.pack(exported, buffer), dst=owner, group=self.pp_group)
