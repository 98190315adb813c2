"""Patch 6: resuming a reshardable DistributedOptimizer checkpoint with torch's Adam (no Apex/TE).

torch Adam keeps a per-parameter `step` tensor and increments it in place. Megatron restores it
from `param_groups`, but (a) hands every parameter the SAME tensor, so the first step after a
resume advances it once per parameter and the bias correction goes wrong, and (b) then copies the
per-parameter tensors, whose checkpoint entries deliberately skip `step`: KeyError('step').
Give each parameter its own step tensor, and skip the key the checkpoint does not carry.
"""
from ._core import apply_rewrites

MODULE = "megatron.core.optimizer.distrib_optimizer"
REWRITES = [
    (MODULE, "DistributedOptimizer.load_state_dict",
     [('s["step"] = step\n', 's["step"] = step.clone()  # one tensor per parameter\n')]),
    (MODULE, "DistributedOptimizer._set_main_param_and_optimizer_states",
     [("for key in dst_tensors:\n",
       "for key in [k for k in dst_tensors if k in tensors or k != 'step']:  # step: from param_groups\n")]),
]


def apply() -> None:
    apply_rewrites(REWRITES)
