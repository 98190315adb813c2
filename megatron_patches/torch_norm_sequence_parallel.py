"""Patch 6: sequence parallelism with megatron's torch norms (the local spec without TE or Apex).

`WrappedTorchNorm` refuses `sequence_parallel`, although a norm computes the same thing on a slice of
the sequence as on all of it. What sequence parallelism needs from a norm is that its weight's
gradient (a partial sum over this rank's positions) is summed over the TP group: megatron's
finalize_model_grads does that for parameters marked `sequence_parallel`, as its fused norms mark
theirs. The rewrite drops the refusal and marks the torch norm's parameters the same way.
"""
from ._core import apply_rewrites

REWRITES = [
    ("megatron.core.transformer.torch_norm", "WrappedTorchNorm.__new__",
     [('assert not config.sequence_parallel, f"sequence parallel not supported by torch LayerNorm"', ""),
      ("return norm_cls(normalized_shape=hidden_size, eps=eps)",
       "norm = norm_cls(normalized_shape=hidden_size, eps=eps)\n"
       "    for param in norm.parameters():\n"
       "        setattr(param, 'sequence_parallel', config.sequence_parallel)\n"
       "    return norm")]),
]


def apply() -> None:
    apply_rewrites(REWRITES)
