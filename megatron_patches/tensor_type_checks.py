"""Patches 3 and 4: `Tensor.type()` string checks that only accept CUDA tensor types.

clip_grads asserts grads are 'torch.cuda.FloatTensor' and the distributed optimizer sorts params
into fp16/fp32 groups by the same strings; on CPU the strings lack the '.cuda' part.
"""
from ._core import apply_rewrites

REWRITES = [
    ("megatron.core.optimizer.clip_grads", "clip_grad_by_total_norm_fp32",
     [("param.grad.type() == 'torch.cuda.FloatTensor'",
       "param.grad.type() in ('torch.cuda.FloatTensor', 'torch.FloatTensor')")]),
    ("megatron.core.optimizer.distrib_optimizer", "DistributedOptimizer._build_model_and_main_param_groups",
     [("model_param.type() in ['torch.cuda.HalfTensor', 'torch.cuda.BFloat16Tensor']",
       "model_param.type().replace('torch.cuda.', 'torch.') in ['torch.HalfTensor', 'torch.BFloat16Tensor']"),
      ("model_param.type() == 'torch.cuda.FloatTensor'",
       "model_param.type().replace('torch.cuda.', 'torch.') == 'torch.FloatTensor'")]),
]


def apply() -> None:
    apply_rewrites(REWRITES)
