"""One optimizer step over a list of micro-batches, through megatron's pipeline schedule.

The loss function sees the last stage's per-token outputs (the policy's logprobs and entropy, the
critic's values) and the micro-batch, both in the micro-batch's rows' layout (a packed micro-batch's
outputs are unpacked first), and returns its share of the step loss under the loss-normalisation
contract of model_setup.py.

A step whose loss or gradients hold NaN/Inf anywhere in the job is skipped on every rank: the
weights, optimizer moments and LR schedule stay as they were (fp32 megatron has no grad scaler to
catch it, and clipping a NaN norm would write NaN into every weight).
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state as mpu
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from superrl.algorithms.counts import comm_device
from superrl.algorithms.sft_loss import sft_loss
from superrl.trainer.packing import Packing

IGNORE = -100


@dataclass
class MicroBatch:
    tokens: torch.Tensor  # [b, s] input ids (right-padded)
    targets: torch.Tensor  # [b, s] next-token ids, IGNORE where no loss is taken
    # The RL step's rows (batching.py); a plain SFT batch has none of these.
    row_kind: Optional[torch.Tensor] = None  # [b] ROLLOUT | EXPERT | PADDING
    row_index: Optional[torch.Tensor] = None  # [b] index among the step's rows of that kind
    # Recomputed before the update, on the last pipeline stage only (None elsewhere).
    old_logprobs: Optional[torch.Tensor] = None  # [b, s] log pi_old of the rollout policy
    old_entropy: Optional[torch.Tensor] = None  # [b, s] its token entropy
    ref_logprobs: Optional[torch.Tensor] = None  # [b, s] log pi_ref of the frozen reference (KL)
    # The engine's log-probs of the tokens it sampled (rollout correction; 0 off the response tokens).
    engine_logprobs: Optional[torch.Tensor] = None  # [b, s]
    # Set: the model runs the rows packed into one sequence (packing.py); every [b, s] tensor
    # above, and what the loss sees, keeps the rows' layout all the same.
    packing: Optional[Packing] = None

    @property
    def position_ids(self) -> torch.Tensor:
        b, s = self.tokens.shape
        return torch.arange(s, device=self.tokens.device).unsqueeze(0).expand(b, s)

    def to(self, device: torch.device) -> "MicroBatch":
        """This micro-batch with every tensor on `device` (tensors already there are not copied)."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


def model_device(model) -> torch.device:
    """Where the model's parameters live: every tensor a step gives the model goes there."""
    return next(model.parameters()).device


# (the last stage's outputs..., micro-batch) -> (loss, {metric: sum}); outputs: the policy's
# (logprobs, entropy), the critic's (values,) (models/value.py)
LossFn = Callable[..., tuple]


def forward_backward(model, micro_batches: list, loss_fn: LossFn, forward_only: bool = False,
                     share_metrics: bool = True) -> dict:
    """Run all micro-batches; return metric sums, all-reduced so every rank holds the same dict
    (an empty dict without `share_metrics`: then no collective beyond the model's own)."""
    device, multiple = model_device(model), _sequence_multiple(model)
    mbs, seq_len = _input_shape(micro_batches[0], multiple)
    pipelined = mpu.get_pipeline_model_parallel_world_size() > 1
    if pipelined and any(_input_shape(mb, multiple) != (mbs, seq_len) for mb in micro_batches):
        raise ValueError("pipeline schedules need equal micro-batch shapes; pad micro-batches first")

    def forward_step(data_iterator, model_chunk):
        mb = next(data_iterator).to(device)  # batches are built on the host
        tokens, position_ids, targets, packed_seq_params = _model_input(mb, multiple)
        output = model_chunk(tokens, position_ids, None, labels=targets, packed_seq_params=packed_seq_params)
        return output, lambda out: _loss_with_metrics(loss_fn, _row_outputs(out, mb), mb)

    results = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(micro_batches), model=[model],
        num_microbatches=len(micro_batches), seq_length=seq_len, micro_batch_size=mbs, forward_only=forward_only)
    return _sum_metrics_to_all_ranks(results) if share_metrics else {}


def _sequence_multiple(model) -> int:
    """Sequence parallelism splits the sequence over the TP ranks: widths must divide by TP."""
    return mpu.get_tensor_model_parallel_world_size() if get_model_config(model).sequence_parallel else 1


def _input_shape(mb: MicroBatch, multiple: int) -> tuple:
    """[b, s] of what the model runs for `mb` (_model_input)."""
    if mb.packing is not None:
        return 1, mb.packing.padded(multiple).width
    return mb.tokens.shape[0], mb.tokens.shape[1] + -mb.tokens.shape[1] % multiple


def _model_input(mb: MicroBatch, multiple: int) -> tuple:
    """(tokens, position_ids, targets, packed_seq_params) the model runs for `mb`, padded to a multiple
    of `multiple` positions: its rows, or its packed sequence with megatron's packed-sequence
    parameters (the padding is a segment of its own there)."""
    if mb.packing is None:
        padded = _pad_width(mb, multiple)
        return padded.tokens, padded.position_ids, padded.targets, None
    packing, device = mb.packing.padded(multiple), mb.tokens.device
    return (packing.pack(mb.tokens, 0), packing.position_ids(device), packing.pack(mb.targets, IGNORE),
            packing.seq_params(device))


def _row_outputs(output, mb: MicroBatch) -> tuple:
    """The last stage's (logprobs, entropy) in `mb`'s rows' layout [b, s], as the loss indexes them."""
    width = mb.tokens.shape[1]
    if mb.packing is not None:
        return tuple(mb.packing.unpack(o, width) for o in output)
    return tuple(o[:, :width] for o in output)


def _pad_width(mb: MicroBatch, multiple: int) -> MicroBatch:
    """The model's input: `mb`'s tokens and targets right-padded to a multiple of `multiple` positions
    (causal attention keeps the extra positions out of the real ones; their targets are ignored, and
    the loss sees the outputs cut back to `mb`'s width)."""
    extra = -mb.tokens.shape[1] % multiple
    if not extra:
        return mb
    return MicroBatch(F.pad(mb.tokens, (0, extra), value=0), F.pad(mb.targets, (0, extra), value=IGNORE))


def _loss_with_metrics(loss_fn: LossFn, output: tuple, mb: MicroBatch):
    loss, metrics = loss_fn(*output, mb)  # the policy's (logprobs, entropy), the critic's (values,)
    reduced = {k: torch.as_tensor(v, dtype=torch.float64, device=loss.device).detach().reshape(())
               for k, v in metrics.items()}
    reduced["loss"] = loss.detach().double()
    return loss, torch.ones((), dtype=torch.int, device=loss.device), reduced


def _sum_metrics_to_all_ranks(results: list) -> dict:
    """Metrics exist on the last PP stage only: sum over micro-batches and DP, share with all."""
    keys = sorted(results[0]) if results else []
    last = mpu.get_pipeline_model_parallel_last_rank()
    names = [keys]
    dist.broadcast_object_list(names, src=last, group=mpu.get_pipeline_model_parallel_group())
    keys = names[0]
    dp_group, pp_group = mpu.get_data_parallel_group(), mpu.get_pipeline_model_parallel_group()
    values = torch.zeros(len(keys), dtype=torch.float64, device=comm_device(dp_group))
    for r in results:
        values += torch.stack([r[k] for k in keys]).to(values.device)
    dist.all_reduce(values, group=dp_group)
    values = values.to(comm_device(pp_group))
    dist.broadcast(values, src=last, group=pp_group)
    return dict(zip(keys, values.tolist()))


def grads_and_loss_finite(model, loss: float) -> bool:
    """Collective over the world: True only when every rank's loss and gradients are finite."""
    finite = math.isfinite(loss) and all(bool(torch.isfinite(buffer.grad_data).all())
                                         for buffer in model.buffers + model.expert_parallel_buffers)
    flag = torch.tensor(int(finite), device=comm_device(dist.group.WORLD))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


def optimizer_step(state) -> tuple:
    """Apply the accumulated gradients; returns (applied, grad_norm)."""
    applied, grad_norm, _ = state.optimizer.step()
    if applied:
        state.scheduler.step(increment=1)
    return applied, grad_norm


def accumulate_gradients(state, micro_batches: list, loss_fn: LossFn) -> dict:
    """Forward and backward of every micro-batch into fresh gradient buffers; the metric sums."""
    state.model.zero_grad_buffer()
    state.optimizer.zero_grad()
    return forward_backward(state.model, micro_batches, loss_fn)


def apply_gradients(state, metrics: dict) -> dict:
    """The optimizer step on the accumulated gradients, skipped on every rank when the loss or a
    gradient is non-finite anywhere; returns grad_norm and step_applied."""
    applied, grad_norm = False, None
    if grads_and_loss_finite(state.model, metrics["loss"]):
        applied, grad_norm = optimizer_step(state)
    state.model.zero_grad_buffer()
    state.optimizer.zero_grad()
    return {"grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "step_applied": float(applied)}


def train_step(state, micro_batches: list, loss_fn: LossFn) -> dict:
    metrics = accumulate_gradients(state, micro_batches, loss_fn)
    metrics.update(apply_gradients(state, metrics))
    return metrics


def sft_loss_fn(global_target_tokens: float) -> LossFn:
    """Token-mean NLL over the whole DP batch: each micro-batch divides by the global count."""
    def loss_fn(logprobs, entropy, mb: MicroBatch):
        mask = (mb.targets != IGNORE).to(logprobs.dtype)
        loss = sft_loss(logprobs, mask, "token_mean", global_target_tokens)
        return loss, {"loss/sft_sum": loss.detach() * global_target_tokens, "tokens": mask.sum()}
    return loss_fn


def forward_outputs(model, micro_batches: list) -> list:
    """Forward only: on the last stage, each micro-batch's detached outputs [b, s] (the policy's
    (logprobs, entropy), the critic's (values,)); empty on the other stages. Used to recompute
    old-policy and reference log-probs and the critic's values. Collective over the model-parallel
    group only: data-parallel replicas may call it for different rows."""
    outputs = []

    def record(*outputs_and_mb):
        mb_outputs = outputs_and_mb[:-1]
        outputs.append(tuple(o.detach() for o in mb_outputs))
        return mb_outputs[0].sum() * 0.0, {}

    with torch.no_grad():
        forward_backward(model, micro_batches, record, forward_only=True, share_metrics=False)
    return outputs


def from_last_stage(tensor: torch.Tensor) -> torch.Tensor:
    """The last pipeline stage's host `tensor` on every stage (the same shape everywhere): what
    forward_outputs computed there, for decisions every stage makes alike. Collective over PP."""
    group = mpu.get_pipeline_model_parallel_group()
    buffer = tensor.to(comm_device(group))
    dist.broadcast(buffer, src=mpu.get_pipeline_model_parallel_last_rank(), group=group)
    return buffer.cpu()
