"""Input checks for the fused ops: fail early with the offending shapes, dtypes and values."""
import torch

from superrl.ops._softmax_chunks import IGNORE_INDEX

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _check_float(name: str, tensor: torch.Tensor, ndim: int) -> None:
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor ({_FLOAT_DTYPES}), got {tensor.dtype}")


def _check_targets(targets: torch.Tensor, num_tokens: int, device: torch.device) -> None:
    if targets.dim() != 1 or targets.shape[0] != num_tokens:
        raise ValueError(f"targets must have shape [{num_tokens}], got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor of token ids, got {targets.dtype}")
    if targets.device != device:
        raise ValueError(f"targets are on {targets.device} but the inputs are on {device}")


def _check_vocab_shard(name: str, shard_size: int) -> None:
    if shard_size < 1:
        raise ValueError(f"{name} holds an empty vocab shard (V/tp = {shard_size})")


def check_target_range(targets: torch.Tensor, vocab_size: int) -> None:
    """Every target is a global id in [0, vocab_size) or IGNORE_INDEX (-100)."""
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= vocab_size))
    if bad.any():
        position = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets[{position}] = {int(targets[position])} is outside the vocabulary "
                         f"[0, {vocab_size}) and is not the ignore index {IGNORE_INDEX}")


def check_logits_inputs(logits: torch.Tensor, targets: torch.Tensor) -> None:
    _check_float("logits", logits, 2)
    _check_vocab_shard("logits", logits.shape[1])
    _check_targets(targets, logits.shape[0], logits.device)


def check_linear_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        chunk_size) -> None:
    _check_float("hidden", hidden, 2)
    _check_float("weight", weight, 2)
    _check_vocab_shard("weight", weight.shape[0])
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [T, h] = {tuple(hidden.shape)} and weight [V/tp, h] = "
                         f"{tuple(weight.shape)} disagree on the hidden size h")
    if hidden.dtype != weight.dtype or hidden.device != weight.device:
        raise ValueError(f"hidden ({hidden.dtype}, {hidden.device}) and weight "
                         f"({weight.dtype}, {weight.device}) must share dtype and device")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    _check_targets(targets, hidden.shape[0], hidden.device)
