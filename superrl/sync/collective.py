"""Collective transport: works for any placement (multi-node, GPU/NCCL, CPU/gloo).

* Each PP stage fills its buckets on its tp_rank-0 rank (the stage's *packer*): for every HF
  tensor of a bucket, the stage's other TP ranks send their parts of it (hf_parts.py) to the
  packer, which receives them straight into the tensor's place in the flat bucket when the parts
  are row blocks of it (vocab-parallel embedding and lm_head, column-parallel weights).
* One holder (the owner): stage 0's packer is the owner and applies its buckets itself. Stage
  s > 0 sends each filled bucket point-to-point to the owner over their PP group (both are
  tp_rank 0 of the same replica, so they share it).
* Several holders (vLLM on every rank): each filled bucket is broadcast from its stage's packer
  over the replica, and every holder applies it.

Memory on a packer: one flat buffer of the bucket size (a tensor larger than the bucket gets a
buffer of its own size instead), plus one part-sized buffer while building a tensor whose parts
cannot land in place (split along the input dimension: row-parallel o_proj/down_proj). A TP peer
holds no more than its part. No parameter is all-gathered next to its concatenation.
"""
import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.sync.hf_parts import landing_view, local_hf_parts, write_part
from superrl.sync.plan import Bucket, build_plan
from superrl.sync.transport import SyncSetup, Transport, apply_bucket


class CollectiveTransport(Transport):
    name = "collective"

    @staticmethod
    def unusable_reason(setup: SyncSetup):
        return None  # point-to-point over the trainer's own groups: any placement

    def __init__(self, setup: SyncSetup):
        self.setup, self.replica = setup, setup.replica
        self.tp_group, self.packer = mpu.get_tensor_model_parallel_group(), mpu.get_tensor_model_parallel_src_rank()
        self.tp_ranks = dist.get_process_group_ranks(self.tp_group)
        self.pp_group = mpu.get_pipeline_model_parallel_group()
        self.packers = self._stage_packers()  # global rank of each stage's packer (tp_rank 0)
        param = next(setup.model.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.plan = build_plan(setup.arch, self.replica.pp_size, setup.bucket_bytes, setup.element_size)
        self.total_numel = sum(b.numel for b in self.plan)
        bucket_numel = max(1, setup.bucket_bytes // setup.element_size)
        # The reused buffer holds the largest bucket within the size limit (a small model's whole
        # stage needs less than the limit); tensors above it get a buffer of their own.
        self.buffer_numel = max((b.numel for b in self.plan if b.numel <= bucket_numel), default=0)

    def _stage_packers(self) -> list:
        ranks = [None] * dist.get_world_size(self.replica.group)
        dist.all_gather_object(ranks, (self.replica.pp_rank, self.replica.tp_rank, dist.get_rank()),
                               group=self.replica.group)
        return [rank for _, tp_rank, rank in sorted(ranks) if tp_rank == 0]

    def sync(self) -> None:
        s, r = self.setup, self.replica
        parts = local_hf_parts(s.model, s.arch, r.tp_size, r.pp_rank, r.pp_size)
        buffer = (torch.empty(self.buffer_numel, dtype=self.dtype, device=self.device)
                  if r.tp_rank == 0 or not s.single_holder else None)
        for bucket in self.plan:
            flat = None
            if bucket.stage == r.pp_rank:
                flat = self._fill(bucket, parts, buffer)
            if not s.single_holder:
                self._broadcast(bucket, flat, buffer)
                continue
            if r.tp_rank != 0:
                continue
            if r.is_owner:
                if bucket.stage != 0:
                    flat = self._flat(bucket, buffer)
                    dist.recv(flat, src=self.packers[bucket.stage], group=self.pp_group)
                apply_bucket(s.engine, bucket, flat)
            elif bucket.stage == r.pp_rank:
                # Blocking send: the buffer is refilled only once the owner has this bucket.
                dist.send(flat, dst=self.packers[0], group=self.pp_group)

    def _broadcast(self, bucket: Bucket, flat, buffer) -> None:
        """Collective over the replica: the stage's packer sends its filled bucket to every rank;
        the holders apply it."""
        flat = self._flat(bucket, buffer) if flat is None else flat
        dist.broadcast(flat, src=self.packers[bucket.stage], group=self.replica.group)
        if self.setup.engine is not None:
            apply_bucket(self.setup.engine, bucket, flat)

    def _flat(self, bucket: Bucket, buffer: torch.Tensor) -> torch.Tensor:
        """The bucket's flat storage: the reused buffer, or a fresh one for a tensor larger than it."""
        if bucket.numel <= buffer.numel():
            return buffer[:bucket.numel]
        return torch.empty(bucket.numel, dtype=self.dtype, device=self.device)

    def _fill(self, bucket: Bucket, parts, buffer):
        """Collective over the stage's TP group: the filled flat bucket on the packer, None elsewhere."""
        flat = self._flat(bucket, buffer) if self.replica.tp_rank == 0 else None
        views = [view for _, view in bucket.unflatten(flat)] if flat is not None else [None] * len(bucket.slots)
        for slot, view in zip(bucket.slots, views):
            _, tp_dim, part = bucket.next_item(parts, slot)
            self._gather_part(view, tp_dim, part)
        return flat

    def _gather_part(self, full, tp_dim, part: torch.Tensor) -> None:
        """TP ranks' parts of one HF tensor -> `full` on the packer (None on the other ranks).

        Point-to-point rather than `gather`: gloo's gather stages everything in a flat buffer of
        the whole tensor, a recv lands where it is told."""
        if self.replica.tp_rank != 0:
            if tp_dim is not None:  # a replicated tensor is taken from the packer's own copy
                dist.send(part.contiguous(), dst=self.packer, group=self.tp_group)
            return
        write_part(full, tp_dim, part, 0)
        if tp_dim is None:
            return
        spare = None  # one part-sized landing buffer, for parts that cannot be received in place
        for rank in range(1, self.replica.tp_size):
            view = landing_view(full, tp_dim, part.shape, rank)
            if view is None:
                spare = torch.empty(part.shape, dtype=part.dtype, device=part.device) if spare is None else spare
            dist.recv(spare if view is None else view, src=self.tp_ranks[rank], group=self.tp_group)
            if view is None:
                write_part(full, tp_dim, spare, rank)
