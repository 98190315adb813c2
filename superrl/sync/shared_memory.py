"""Shared-memory transport: every rank of a replica on one host, CPU tensors (the CPU analogue of
the CUDA-IPC path colocated RL frameworks use).

The replica maps one shared region (a /dev/shm file) into all of its ranks. For each bucket of
stage s, every TP rank of stage s writes *its own slice* of each HF tensor straight into place
(rows or columns `tp_rank` of the TP split dimension, as the mapping's concatenation would put
them), then the owner applies views of the bucket. So there is no TP all-gather, no concatenation
and no packing copy: each byte is written once by the rank that holds it and copied once by the
engine (hf_parts.py).
Buckets are half the region, alternating between its two ends, so the next bucket is written
while the engine copies the previous one.

Memory: the region, max(min(bucket size, model size), largest tensor) per replica (the engine
takes whole tensors), mapped for the transport's lifetime like a pinned staging buffer; plus one rank-local
shard's split (a copy only for interleaved QKV).
"""
import os
import uuid

import torch
import torch.distributed as dist

from superrl.sync.hf_parts import local_hf_parts, write_part
from superrl.sync.plan import Bucket, build_plan
from superrl.sync.transport import SHM_DIR, SyncSetup, Transport, apply_bucket, shm_available


def map_shared_bucket(numel: int, dtype: torch.dtype, group, owner: int) -> torch.Tensor:
    """The owner creates a /dev/shm file, every rank of `group` maps it, then the name is unlinked:
    the memory lives exactly as long as the mappings, even if a process dies."""
    path = [os.path.join(SHM_DIR, f"superrl-sync-{uuid.uuid4().hex}") if dist.get_rank() == owner else None]
    if dist.get_rank() == owner:
        region = torch.from_file(path[0], shared=True, size=numel, dtype=dtype)
    dist.broadcast_object_list(path, src=owner, group=group)
    if dist.get_rank() != owner:
        region = torch.from_file(path[0], shared=True, size=numel, dtype=dtype)
    dist.barrier(group=group)
    if dist.get_rank() == owner:
        os.unlink(path[0])
    return region


def bucket_offsets(plan: list, region_numel: int) -> list:
    """Even buckets at the start of the region, odd ones at its end: while the engine copies one
    bucket the next is written beside it, unless the two together exceed the region."""
    return [0 if k % 2 == 0 else region_numel - b.numel for k, b in enumerate(plan)]


def last_overlapping(plan: list, offsets: list, k: int):
    """The latest earlier bucket sharing memory with bucket k (its writers wait until the engine has
    copied that one; the engine copies in order), or None."""
    start, end = offsets[k], offsets[k] + plan[k].numel
    earlier = [i for i in range(k) if offsets[i] < end and start < offsets[i] + plan[i].numel]
    return max(earlier, default=None)


class SharedMemoryTransport(Transport):
    """Point-to-point tokens, not barriers, order the work, so no rank waits for unrelated ones: a
    writer waits only for the engine to release the memory it writes ("free" token), the owner only
    for the writers of the bucket it applies next ("written" tokens)."""

    name = "shared_memory"

    @staticmethod
    def unusable_reason(setup: SyncSetup):
        if setup.local_cpu and shm_available() and setup.single_holder:
            return None
        return f"needs CPU weights, one host, {SHM_DIR} and one engine per replica"

    def __init__(self, setup: SyncSetup):
        self.setup, self.replica = setup, setup.replica
        self.group, self.owner, self.is_owner = self.replica.group, self.replica.owner, self.replica.is_owner
        self.stage_writers = self._stage_writers()
        # Half-size buckets, so that two fit side by side in a region of `bucket_bytes`.
        self.plan = build_plan(setup.arch, self.replica.pp_size, setup.bucket_bytes // 2, setup.element_size)
        # No bigger than the model (a small model under a large limit), no smaller than one bucket.
        self.total_numel = sum(b.numel for b in self.plan)
        region_numel = max(min(setup.bucket_bytes // setup.element_size, self.total_numel),
                           max(b.numel for b in self.plan))
        self.offsets = bucket_offsets(self.plan, region_numel)
        self.wait_for = [last_overlapping(self.plan, self.offsets, k) for k in range(len(self.plan))]
        self.region = map_shared_bucket(region_numel, next(setup.model.parameters()).dtype, self.group, self.owner)

    def _stage_writers(self) -> list:
        """Global ranks of each stage's TP ranks, the owner left out (it needs no tokens from itself)."""
        stages = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(stages, (self.replica.pp_rank, dist.get_rank()), group=self.group)
        return [[rank for pp, rank in stages if pp == stage and rank != self.owner]
                for stage in range(self.replica.pp_size)]

    def sync(self) -> None:
        s, r = self.setup, self.replica
        parts = local_hf_parts(s.model, s.arch, r.tp_size, r.pp_rank, r.pp_size)
        token, sends = torch.zeros(1), []
        for k, bucket in enumerate(self.plan):
            flat = self.region[self.offsets[k]:self.offsets[k] + bucket.numel]
            if bucket.stage == r.pp_rank:
                if not self.is_owner and self.wait_for[k] is not None:
                    dist.recv(token, src=self.owner, group=self.group, tag=2 * k + 1)  # "free"
                self._write(bucket, flat, parts)
                if not self.is_owner:
                    sends.append(dist.isend(token, dst=self.owner, group=self.group, tag=2 * k))  # "written"
            if self.is_owner:
                for writer in self.stage_writers[bucket.stage]:
                    dist.recv(torch.zeros(1), src=writer, group=self.group, tag=2 * k)
                apply_bucket(s.engine, bucket, flat)
                sends += self._release(k, token)
        for send in sends:
            send.wait()
        dist.barrier(group=self.group)  # the owner arrives last: the next sync may overwrite any bucket

    def _write(self, bucket: Bucket, flat: torch.Tensor, parts) -> None:
        for slot, (_, full) in zip(bucket.slots, bucket.unflatten(flat)):
            _, tp_dim, part = bucket.next_item(parts, slot)
            write_part(full, tp_dim, part, self.replica.tp_rank)

    def _release(self, applied: int, token: torch.Tensor) -> list:
        """Tell the writers of every bucket that waits for bucket `applied` that its memory is free."""
        return [dist.isend(token, dst=writer, group=self.group, tag=2 * k + 1)
                for k, waits_for in enumerate(self.wait_for) if waits_for == applied
                for writer in self.stage_writers[self.plan[k].stage]]
