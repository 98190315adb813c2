"""Direct transport: every rank of a replica writes its parts straight into the engine's weights.

For an engine whose parameters live in memory other processes on the host can map
(`EmbeddedEngine.shared_weights()` on CPU; superrl/rollout/shared_weights.py). WeightSync sends the
owner's map description once; every TP/PP rank of the replica maps the engine's parameters and, at each
sync, writes its own part of each HF tensor into place (hf_parts.py). One copy per byte, made by
the rank that holds it, all ranks at once: no bucket, no staging buffer, no all-gather. A barrier
ends the sync, then the engine re-derives its GEMM operand copies before its next forward.

Memory: nothing beyond one rank-local shard's split (a copy only for interleaved QKV); the mapped
pages are the engine's own weights.
"""
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.sync.hf_parts import local_hf_parts, write_part


class DirectTransport:
    def __init__(self, model, arch, engine, shared_weights):
        """engine: the owner's engine, None on other ranks. shared_weights: its
        `shared_weights()`, on every rank of the replica (weight_sync.owner_shared_weights)."""
        self.model, self.arch, self.engine = model, arch, engine
        self.tp_rank, self.tp_size = mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size()
        self.pp_rank, self.pp_size = mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_world_size()
        self.group = mpu.get_model_parallel_group()  # the TP x PP ranks of this replica
        # The owner writes through the engine's own views: a second mapping would count twice in RSS.
        self.targets = engine.state_dict() if engine is not None else shared_weights.map()
        self.plan = []  # nothing is bucketed
        self.total_numel = sum(t.numel() for t in self.targets.values())

    def sync(self, apply_bucket) -> None:
        """`apply_bucket` is unused: the engine's parameters are written in place."""
        for name, tp_dim, part in local_hf_parts(self.model, self.arch, self.tp_size, self.pp_rank, self.pp_size):
            write_part(self.targets[name], tp_dim, part, self.tp_rank)
        dist.barrier(group=self.group)  # every part is in place before the engine reads any
        if self.engine is not None:
            self.engine.weights_written()
