"""The bucket plan: which HF tensors travel together, and where each sits in its flat bucket.

Every rank builds the same plan from the architecture alone, so sender and receiver agree on
names, shapes, offsets and order without exchanging any metadata. Names and order come from
running the shared weight mapping (`stage_state_to_hf`) on meta tensors: they are by construction
the order in which `export_hf_weights` and the transports' `hf_parts.local_hf_parts` yield a
stage's tensors.
"""
from dataclasses import dataclass

import torch

from superrl.hf_config import ModelArch
from superrl.weights import mapping


def stage_hf_shapes(arch: ModelArch, pp_rank: int, pp_size: int) -> list:
    """(HF name, shape) of every tensor one PP stage exports, in export order."""
    shapes = mapping.hf_tensor_shapes(arch)  # every layer's tensors have layer 0's shapes

    def meta_shards(megatron_name, param_map):
        parts = [torch.empty(shapes[n.format(layer=0)], device="meta") for n in param_map.hf]
        return [mapping.to_megatron_shard(param_map, parts, arch, 0, 1, arch.vocab_size)]

    return [(name, tuple(t.shape)) for name, t in mapping.stage_state_to_hf(meta_shards, arch, pp_rank, pp_size)]


@dataclass(frozen=True)
class Slot:
    name: str  # HF name
    shape: tuple
    offset: int  # elements from the start of the bucket

    @property
    def numel(self) -> int:
        return torch.Size(self.shape).numel()


@dataclass(frozen=True)
class Bucket:
    stage: int  # the PP stage that exports these tensors
    slots: tuple

    @property
    def numel(self) -> int:
        last = self.slots[-1]
        return last.offset + last.numel

    def unflatten(self, flat: torch.Tensor) -> list:
        """(HF name, view into `flat`) for every tensor of the bucket: no copies."""
        return [(s.name, flat[s.offset:s.offset + s.numel].view(s.shape)) for s in self.slots]

    def next_item(self, stream, slot: Slot) -> tuple:
        """The next (HF name, ...) item of a stage's export stream, which must be `slot`'s tensor."""
        item = next(stream, None)
        if item is None or item[0] != slot.name:
            got = "nothing" if item is None else item[0]
            raise RuntimeError(f"weight sync plan expects {slot.name} from stage {self.stage}, the model "
                               f"exported {got} (plan and weight mapping disagree)")
        return item


def plan_stage_buckets(shapes: list, stage: int, bucket_numel: int) -> list:
    """Greedy, in export order: start a new bucket when the next tensor would overflow this one."""
    buckets, slots, offset = [], [], 0
    for name, shape in shapes:
        numel = torch.Size(shape).numel()
        if slots and offset + numel > bucket_numel:
            buckets.append(Bucket(stage, tuple(slots)))
            slots, offset = [], 0
        slots.append(Slot(name, shape, offset))
        offset += numel
    if slots:
        buckets.append(Bucket(stage, tuple(slots)))
    return buckets


def build_plan(arch: ModelArch, pp_size: int, bucket_bytes: int, element_size: int) -> list:
    """Buckets of every stage, stage 0 first: the order the engine receives them in."""
    bucket_numel = max(1, bucket_bytes // element_size)
    return [bucket for stage in range(pp_size)
            for bucket in plan_stage_buckets(stage_hf_shapes(arch, stage, pp_size), stage, bucket_numel)]
