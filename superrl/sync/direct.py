"""Direct transport: every rank of a replica writes its parts straight into the engine's weights.

For an engine whose parameters live in memory other processes on the host can map
(`RolloutEngine.shared_weights()`: `EmbeddedEngine` on CPU; superrl/rollout/shared_weights.py).
Every TP/PP rank of the replica maps the engine's parameters and, at each sync, writes its own
part of each HF tensor into place (hf_parts.py). One copy per byte, made by the rank that holds it,
all ranks at once: no bucket, no staging buffer, no all-gather. A barrier ends the sync, then the
engine is told (`weights_written`) before its next forward.

Memory: nothing beyond one rank-local shard's split (a copy only for interleaved QKV); the mapped
pages are the engine's own weights.
"""
import torch.distributed as dist

from superrl.sync.hf_parts import local_hf_parts, write_part
from superrl.sync.transport import SyncSetup, Transport


class DirectTransport(Transport):
    name = "direct"

    @staticmethod
    def unusable_reason(setup: SyncSetup):
        if setup.shared_weights is None or not setup.local_cpu or not setup.single_holder:
            return ("needs CPU weights, the replica on one host and one engine per replica whose weights "
                    "other processes can map (EmbeddedEngine on CPU, Linux)")
        return None

    def __init__(self, setup: SyncSetup):
        self.setup = setup
        # The owner writes through the engine's own views: a second mapping would count twice in RSS.
        self.targets = setup.engine.state_dict() if setup.engine is not None else setup.shared_weights.map()
        self.plan = []  # nothing is bucketed
        self.total_numel = sum(t.numel() for t in self.targets.values())

    def sync(self) -> None:
        s, r = self.setup, self.setup.replica
        for name, tp_dim, part in local_hf_parts(s.model, s.arch, r.tp_size, r.pp_rank, r.pp_size):
            write_part(self.targets[name], tp_dim, part, r.tp_rank)
        dist.barrier(group=r.group)  # every part is in place before the engine reads any
        if s.engine is not None:
            s.engine.weights_written()
