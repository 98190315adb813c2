"""Collective transport: works for any placement (multi-node, GPU/NCCL, CPU/gloo).

* Each PP stage exports its layers through the shared mapping (`export_hf_weights`): a
  parameter's TP shards are all-gathered inside the stage's TP group and resharded into full HF
  tensors. Only the stage's tp_rank-0 rank uses them; its TP peers take part in the all-gathers.
* Stage 0's tensors are packed into flat buckets on the owner itself. Stage s > 0 packs on its
  tp_rank-0 rank and sends each flat bucket point-to-point to the owner over their PP group (both
  are tp_rank 0 of the same replica, so they share it).

Memory per packing/receiving rank: one flat buffer of at most the bucket size, plus the reshard of
the one parameter being exported (at TP > 1 its all-gathered shards and their concatenation
briefly coexist).
"""
import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.sync.plan import build_plan, packing_capacity
from superrl.weights.load import export_hf_weights


class CollectiveTransport:
    def __init__(self, model, arch, bucket_bytes: int):
        self.model, self.arch = model, arch
        self.tp_rank = mpu.get_tensor_model_parallel_rank()
        self.pp_rank = mpu.get_pipeline_model_parallel_rank()
        self.pp_group = mpu.get_pipeline_model_parallel_group()
        self.stage_ranks = dist.get_process_group_ranks(self.pp_group)  # global rank of each stage
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.plan = build_plan(arch, len(self.stage_ranks), bucket_bytes, param.element_size())

    def sync(self, apply_bucket) -> None:
        exported = export_hf_weights(self.model, self.arch)
        if self.tp_rank == 0 and self.pp_rank == 0:
            self._receive_and_apply(exported, apply_bucket)
        elif self.tp_rank == 0:
            self._pack_and_send(exported)
        else:
            for _ in exported:  # TP peers: take part in the all-gathers only
                pass

    def _buffer(self) -> torch.Tensor:
        return torch.empty(packing_capacity(self.plan), dtype=self.dtype, device=self.device)

    def _receive_and_apply(self, exported, apply_bucket) -> None:
        buffer = self._buffer()
        for bucket in self.plan:
            if bucket.stage == 0:
                flat = bucket.pack(exported, buffer)
            else:
                flat = buffer[:bucket.numel] if bucket.numel <= buffer.numel() else \
                    torch.empty(bucket.numel, dtype=self.dtype, device=self.device)
                dist.recv(flat, src=self.stage_ranks[bucket.stage], group=self.pp_group)
            apply_bucket(bucket, flat)
            del flat  # a lone tensor's bucket is the exported tensor itself: free it before the next

    def _pack_and_send(self, exported) -> None:
        buffer = self._buffer()
        owner = self.stage_ranks[0]
        for bucket in self.plan:
            if bucket.stage == self.pp_rank:
                # Blocking send: the buffer is refilled only once the owner has this bucket.
                dist.send(bucket.pack(exported, buffer), dst=owner, group=self.pp_group)
