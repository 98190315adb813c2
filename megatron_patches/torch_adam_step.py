"""Patch 6: resuming a reshardable DistributedOptimizer checkpoint with torch's Adam (no Apex/TE).

torch Adam keeps a per-parameter `step` tensor. Megatron restores it from `param_groups` before it
copies the per-parameter tensors, whose checkpoint entries deliberately skip `step`; the copy loop
then fails with KeyError('step'). Skip the key the checkpoint does not carry.
"""
from ._core import rewrite_function

MODULE = "megatron.core.optimizer.distrib_optimizer"
QUALNAME = "DistributedOptimizer._set_main_param_and_optimizer_states"
REPLACEMENTS = [(
    "for key in dst_tensors:\n",
    "for key in [k for k in dst_tensors if k in tensors or k != 'step']:  # step: from param_groups\n",
)]


def apply() -> None:
    rewrite_function(MODULE, QUALNAME, REPLACEMENTS)
