"""Patch 6: resuming a reshardable DistributedOptimizer checkpoint with torch's Adam (no Apex/TE).

torch Adam keeps a per-parameter `step` tensor and increments it in place. Megatron restores it
from `param_groups`, but (a) hands every parameter the SAME tensor, so the first step after a
resume advances it once per parameter and the bias correction goes wrong, and (b) then copies the
per-parameter tensors, whose checkpoint entries deliberately skip `step`: KeyError('step').
Give each parameter its own step tensor, and skip the key the checkpoint does not carry.

The bug is in megatron's handling of torch's Adam, not in anything CPU-specific: it bites on a GPU
too whenever megatron falls back to torch's Adam (neither Transformer Engine's nor Apex's FusedAdam
importable). `apply_if_needed` applies the fix exactly then, whatever the device.
"""
from ._core import apply_rewrites, check_megatron_version

MODULE = "megatron.core.optimizer.distrib_optimizer"
REWRITES = [
    (MODULE, "DistributedOptimizer.load_state_dict",
     [('s["step"] = step\n', 's["step"] = step.clone()  # one tensor per parameter\n')]),
    (MODULE, "DistributedOptimizer._set_main_param_and_optimizer_states",
     [("for key in dst_tensors:\n",
       "for key in [k for k in dst_tensors if k in tensors or k != 'step']:  # step: from param_groups\n")]),
]


def megatron_uses_torch_adam() -> bool:
    """The flag megatron itself sets at import when it falls back to torch.optim.Adam/AdamW
    (get_megatron_optimizer picks the Adam class by it)."""
    from megatron.core import optimizer

    return bool(optimizer.USING_PYTORCH_OPTIMIZER)


def apply() -> None:
    apply_rewrites(REWRITES)


def apply_if_needed() -> bool:
    """Apply the fix when megatron uses torch's Adam (CPU or GPU). Returns whether it did."""
    if not megatron_uses_torch_adam():
        return False  # TE/Apex FusedAdam keep their own per-parameter step: nothing to fix
    check_megatron_version()
    apply()  # idempotent: every rewrite starts from the upstream source
    return True
