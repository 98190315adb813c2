"""Memory pre-flight: what one GPU (one rank) holds during a step, from the config and the model's
shape alone -- no model is built, no process group exists, nothing is allocated.

`python -m superrl.plan` prints the plan; the trainer checks it at start (`check_memory_plan`) and
refuses, with the table, a plan that cannot fit its GPUs. docs/memory_plan.md explains the model;
in short, per rank (the worst one: every PP stage is planned, the largest is reported):

* resident for the whole run: trainer weights (model.dtype), gradients (megatron's fp32 grad
  buffer), optimizer state (fp32 main params in bf16, two fp32 Adam moments; 1/DP each under the
  distributed optimizer) and the frozen reference model (algorithm.kl_coef > 0);
* training phase, the largest of three moments: the backward (the activations autograd saves for
  the micro-batches in flight, recomputation, the fused output layer's logits chunk and
  weight-gradient accumulator), the finite check of the gradients, and the optimizer step's
  temporaries;
* rollout phase: the engine -- its weights and KV cache (embedded engine), or the share of the GPU
  vLLM reserves (rollout.gpu_memory_utilization), which must hold its weights and KV cache.

peak = resident + max(training, rollout) when the engine sleeps during training (vLLM with
rollout.colocate on a GPU), resident + training + rollout otherwise.
"""
import inspect
import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch

from superrl.config import Config, ConfigError, engine_tensor_parallel_size
from superrl.hf_config import ModelArch
from superrl.ops.fused_linear import default_chunk_size
from superrl.rollout.embedded import CACHE_ROUNDING, EmbeddedEngine
from superrl.trainer.engine_setup import engine_dtype, engine_max_model_len
from superrl.weights.mapping import hf_tensor_shapes, stage_param_maps

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
FP32, TOKEN_ID = 4, 8  # bytes: fp32 master state and statistics; int64 token ids
# megatron's grad buffer (distributed optimizer) starts every parameter at a multiple of 64
# elements and pads every bucket to lcm(DP, 128), so each DP rank gets an equal shard
PARAM_ALIGN, BUCKET_ALIGN = 64, 128
DEFAULT_BUCKET_ELEMENTS, BUCKET_ELEMENTS_PER_DP_RANK = 40_000_000, 1_000_000  # megatron's DDP defaults
VLLM_BLOCK_TOKENS = 16  # vLLM allocates KV in blocks of 16 tokens (its default block size)
VLLM_VOCAB_PADDING = 64  # vLLM pads the vocabulary to a multiple of 64 before splitting it over TP
# The embedded engine bounds one prefill batch by its constructor's default (the trainer passes none).
EMBEDDED_PREFILL_TOKENS = inspect.signature(EmbeddedEngine.__init__).parameters["max_prefill_tokens"].default

RESIDENT, ROLLOUT, INSIDE = "resident", "rollout", "inside the reservation"
# The training phase passes through three moments, one after the other, each on top of what stays
# resident: its peak is the largest of them.
BACKWARD, GRAD_CHECK, OPTIMIZER_STEP = "training: backward", "training: finite check", "training: optimizer step"
TRAINING_MOMENTS = (BACKWARD, GRAD_CHECK, OPTIMIZER_STEP)


@dataclass(frozen=True)
class Target:
    """What the plan is for: one device's memory and the kernels that decide transient sizes."""
    memory_bytes: int
    # Transformer Engine: its layer spec (fused norm + linear, flash attention) and its FusedAdam;
    # without it megatron's local spec (unfused attention) and torch's AdamW
    transformer_engine: bool = True
    on_gpu: bool = True  # NCCL's in-place all-gather, vLLM's sleep mode, and a GPU's memory total
    engine_gemm_copies: bool = False  # CPU without oneDNN: the embedded engine keeps [in, out] GEMM copies


@dataclass(frozen=True)
class Item:
    name: str
    bytes: int
    phase: str  # RESIDENT, one of TRAINING_MOMENTS, ROLLOUT, or INSIDE (part of vLLM's reservation)


@dataclass
class MemoryPlan:
    summary: str  # model, layout and engine in one line
    rank: str  # which rank the table is for
    items: list
    memory_bytes: int
    device: str  # "GPU", or "host" where the plan is computed but not enforced
    engine_sleeps_in_training: bool
    problems: list = field(default_factory=list)  # what cannot work whatever the total says
    warnings: list = field(default_factory=list)

    def phase_bytes(self, phase: str) -> int:
        return sum(item.bytes for item in self.items if item.phase == phase)

    @property
    def training_bytes(self) -> int:
        return max(self.phase_bytes(moment) for moment in TRAINING_MOMENTS)

    @property
    def peak_bytes(self) -> int:
        train, rollout = self.training_bytes, self.phase_bytes(ROLLOUT)
        return self.phase_bytes(RESIDENT) + (max(train, rollout) if self.engine_sleeps_in_training
                                             else train + rollout)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.memory_bytes and not self.problems

    def verdict(self) -> str:
        peak, total, per = self.peak_bytes / GiB, self.memory_bytes / GiB, f"per {self.device}"
        if self.fits:
            line = f"verdict: FITS: peak {peak:.2f} GiB of {total:.2f} GiB {per} ({total - peak:.2f} GiB to spare)"
        elif peak > total:
            line = f"verdict: DOES NOT FIT: peak {peak:.2f} GiB exceeds {total:.2f} GiB {per} by {peak - total:.2f} GiB"
        else:
            line = f"verdict: DOES NOT FIT: peak {peak:.2f} GiB of {total:.2f} GiB {per}, but see the problems below"
        notes = [f"  problem: {p}" for p in self.problems] + [f"  warning: {w}" for w in self.warnings]
        return "\n".join([line] + notes)

    def table(self) -> str:
        width = max(len(item.name) for item in self.items) + 4

        def row(name: str, size: int, note: str = "") -> str:
            return f"{name:<{width}}{size / GiB:>9.3f}  {note}".rstrip()

        rows = [self.summary, f"per {self.device}, {self.rank}:", f"{'component':<{width}}{'GiB':>9}  phase"]
        rows += [row(f"  {item.name}" if item.phase == INSIDE else item.name, item.bytes, item.phase)
                 for item in self.items]
        how = ("resident + max(training, rollout): the engine sleeps while the trainer trains"
               if self.engine_sleeps_in_training else "resident + training + rollout: the engine stays resident")
        rows += [row("resident", self.phase_bytes(RESIDENT)),
                 row("training phase (its largest moment)", self.training_bytes),
                 row("rollout phase", self.phase_bytes(ROLLOUT)),
                 row("peak", self.peak_bytes, f"= {how}"),
                 row(self.device, self.memory_bytes), self.verdict()]
        return "\n".join(rows)


class MemoryPlanError(ConfigError):
    """The plan does not fit the GPU; the message holds the whole table."""


# ---- layout -----------------------------------------------------------------------------------

class Layout(NamedTuple):
    tp: int
    pp: int
    dp: int
    world: int


def layout(config: Config, world_size: int) -> Layout:
    tp, pp = config.parallel.tp, config.parallel.pp
    return Layout(tp, pp, world_size // (tp * pp), world_size)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(n: int, multiple: int) -> int:
    return ceil_div(n, multiple) * multiple


# ---- trainer state ----------------------------------------------------------------------------

def stage_parameter_numels(arch: ModelArch, tp: int, pp: int, stage: int, padded_vocab: int) -> list:
    """Elements of every megatron parameter one TP rank of PP stage `stage` holds: the one HF <->
    megatron mapping names them (vocab rows padded, TP-split dims divided, norms replicated, and
    the last stage's copy of a tied embedding when PP > 1)."""
    shapes = hf_tensor_shapes(arch)
    numels = []
    for param_map, _, layer in stage_param_maps(arch, stage, pp):
        numel = sum(math.prod(shapes[name.format(layer=layer)]) for name in param_map.hf)
        if param_map.vocab:
            numel = numel // arch.vocab_size * padded_vocab
        numels.append(numel // tp if param_map.tp_dim is not None else numel)
    return numels


def shared_embedding_index(arch: ModelArch, pp: int, stage: int, numels: list) -> Optional[int]:
    """Which of `stage_parameter_numels` is a tied embedding shared across PP stages (megatron
    gives it a grad bucket of its own): the first stage's embedding, the last stage's copy."""
    if not (arch.tied_embeddings and pp > 1):
        return None
    return 0 if stage == 0 else len(numels) - 1 if stage == pp - 1 else None


def grad_buffer_numel(numels: list, config: Config, dp: int, first_stage: bool, shared: Optional[int]) -> int:
    """Elements of megatron's grad buffer, laid out as _ParamAndGradBuffer does: parameters in
    reverse order; under the distributed optimizer each starts at a multiple of 64 elements and
    each bucket ends at a multiple of lcm(DP, 128); a bucket closes once it holds bucket_size
    elements (overlap_grad_reduce, first stage only) and a shared embedding gets one of its own.
    (Parameter order follows the weight mapping, which may place a bucket split a few parameters
    away from megatron's: the total moves by less than one bucket's padding.)"""
    if not config.optim.use_distributed_optimizer:
        return sum(numels)
    divisor = math.lcm(dp, BUCKET_ALIGN)
    bucket_size = (max(DEFAULT_BUCKET_ELEMENTS, BUCKET_ELEMENTS_PER_DP_RANK * dp)
                   if config.optim.overlap_grad_reduce and first_stage else None)
    start = bucket_start = end = 0
    open_bucket = False
    for index in reversed(range(len(numels))):
        start = round_up(start, PARAM_ALIGN)
        own = index == shared
        if own and open_bucket:
            start = bucket_start = round_up(start, divisor)
        end, open_bucket = start + numels[index], True
        if own or (bucket_size and end - bucket_start >= bucket_size):
            start = bucket_start = round_up(end, divisor)
            open_bucket = False
        else:
            start = end
    return round_up(end, divisor) if open_bucket else start


class StageParams(NamedTuple):
    """One rank's parameters (elements) on its PP stage."""
    numels: list  # every megatron parameter
    grad_buffer: int  # megatron's grad buffer, padding included
    optimizer_shard: int  # what this rank's optimizer holds: its 1/DP of the buffer, or everything

    @property
    def total(self) -> int:
        return sum(self.numels)


def _stage_params(config: Config, lay: Layout, numels: list, first_stage: bool, shared: Optional[int]) -> StageParams:
    grads = grad_buffer_numel(numels, config, lay.dp, first_stage, shared)
    shard = ceil_div(grads, lay.dp) if config.optim.use_distributed_optimizer else sum(numels)
    return StageParams(numels, grads, shard)


def stage_params(config: Config, arch: ModelArch, lay: Layout, stage: int) -> StageParams:
    padded_vocab = arch.padded_vocab_size(config.model.vocab_pad_multiple)
    numels = stage_parameter_numels(arch, lay.tp, lay.pp, stage, padded_vocab)
    return _stage_params(config, lay, numels, stage == 0, shared_embedding_index(arch, lay.pp, stage, numels))


def critic_stage_params(config: Config, arch: ModelArch, lay: Layout, stage: int) -> StageParams:
    """The critic's (models/value.py, `algorithm.advantage=gae`): the policy's parameters less the
    vocabulary output layer (or the last stage's copy of a tied embedding), plus the value head's
    weight and bias on the last stage; its embedding is never shared across stages."""
    padded_vocab = arch.padded_vocab_size(config.model.vocab_pad_multiple)
    maps = stage_param_maps(arch, stage, lay.pp)
    numels = [numel for (param_map, _, _), numel in zip(maps, stage_parameter_numels(arch, lay.tp, lay.pp, stage, padded_vocab))
              if param_map.megatron != "output_layer.weight"]
    if stage == lay.pp - 1:
        numels.append(arch.hidden_size + 1)
    return _stage_params(config, lay, numels, stage == 0, None)


def model_state_items(label: str, config: Config, params: StageParams, lay: Layout) -> list:
    """Weights, gradients and optimizer state of one trained model (`label`: trainer | critic) on one rank."""
    dtype, over = config.model.dtype, (f"1/DP={lay.dp}" if config.optim.use_distributed_optimizer else "not sharded")
    items = [Item(f"{label} weights ({_count(params.total)} params, {dtype})", params.total * DTYPE_BYTES[dtype], RESIDENT),
             Item(f"{label} gradients (fp32 grad buffer)", params.grad_buffer * FP32, RESIDENT)]
    if dtype != "float32":  # fp32 training updates the weights themselves: no separate main copy
        items.append(Item(f"{label} optimizer: fp32 main params ({over})", params.optimizer_shard * FP32, RESIDENT))
    items.append(Item(f"{label} optimizer: Adam moments, 2 x fp32 ({over})", 2 * params.optimizer_shard * FP32, RESIDENT))
    return items


def trainer_state_items(config: Config, arch: ModelArch, lay: Layout, stage: int) -> list:
    """What one rank keeps all run long: the policy's weights, gradients and optimizer state, the
    reference model with a KL, the critic's with `algorithm.advantage=gae`."""
    params = stage_params(config, arch, lay, stage)
    items = model_state_items("trainer", config, params, lay)
    if config.algorithm.kl_coef > 0:
        items.append(Item(f"reference model (kl_coef > 0, {config.model.dtype})",
                          params.total * DTYPE_BYTES[config.model.dtype], RESIDENT))
    if config.algorithm.advantage == "gae":
        items += model_state_items("critic", config, critic_stage_params(config, arch, lay, stage), lay)
    return items


def update_items(config: Config, params: StageParams, target: Target) -> list:
    """What the step allocates after the backward, when the activations are gone."""
    # torch.isfinite is composite on every device: |g| (fp32) and bool comparisons, 7 bytes per
    # element measured at its peak on CPU
    items = [Item("finite check of the gradients (torch.isfinite)", params.grad_buffer * (FP32 + 3), GRAD_CHECK)]
    if not target.transformer_engine:  # TE's FusedAdam updates in place
        if target.on_gpu:  # torch's multi-tensor AdamW: sqrt of the second moments, all at once
            adam = params.optimizer_shard * FP32
        else:  # torch's per-parameter AdamW on CPU: sqrt and its quotient, one parameter at a time
            adam = 2 * max(params.numels) * FP32
        items.append(Item("optimizer step: torch AdamW temporaries", adam, OPTIMIZER_STEP))
    if config.optim.use_distributed_optimizer and not target.on_gpu:
        # gloo's all-gather of the updated params stages the whole buffer; NCCL's works in place
        items.append(Item("optimizer step: gloo param all-gather staging",
                          params.grad_buffer * DTYPE_BYTES[config.model.dtype], OPTIMIZER_STEP))
    return items


def _count(numel: int) -> str:
    return f"{numel / 1e9:.2f}B" if numel >= 1e9 else f"{numel / 1e6:.1f}M"


# ---- activations ------------------------------------------------------------------------------

class MicroBatch(NamedTuple):
    rows: int  # optim.micro_batch_size; 1 under a token budget (one packed sequence)
    width: int  # tokens per row: the longest row a step makes, or the token budget; padded to TP under SP
    in_flight: int  # micro-batches whose activations this stage holds at once (1F1B warm-up)

    @property
    def tokens(self) -> int:
        return self.rows * self.width


def micro_batch(config: Config, lay: Layout, stage: int) -> MicroBatch:
    budget = config.optim.max_tokens_per_micro_batch
    rows, width = ((1, budget) if budget else
                   (config.optim.micro_batch_size, config.data.max_prompt_len + config.rollout.max_tokens))
    if config.parallel.sequence_parallel:
        width = round_up(width, lay.tp)
    prompts = ceil_div(config.trainer.prompts_per_step, lay.dp)
    step_rows = prompts * config.rollout.n + prompts  # rollout rows, and at most one expert row per prompt
    # packed, a step has at most one micro-batch per row
    return MicroBatch(rows, width, min(lay.pp - stage, ceil_div(step_rows, rows)))


class ActivationShape(NamedTuple):
    """Per-token sizes (elements) on one TP rank, and the bytes of the model's dtype."""
    hidden: int
    q: int  # query heads x head_dim on this rank
    kv: int  # key (= value) heads x head_dim on this rank
    heads: int  # query heads on this rank
    ffn: int
    head_dim: int
    dtype_bytes: int
    sequence_shards: int  # TP under sequence parallelism (norms and residuals see 1/TP of the tokens), else 1


def activation_shape(config: Config, arch: ModelArch, tp: int) -> ActivationShape:
    return ActivationShape(arch.hidden_size, arch.num_heads // tp * arch.head_dim,
                           arch.num_kv_heads // tp * arch.head_dim, arch.num_heads // tp,
                           arch.ffn_hidden_size // tp, arch.head_dim, DTYPE_BYTES[config.model.dtype],
                           tp if config.parallel.sequence_parallel else 1)


def norm_saved_bytes(shape: ActivationShape, tokens: int, transformer_engine: bool) -> int:
    """One RMSNorm: torch's keeps its input and normalised value in fp32 (bf16 inputs are upcast)
    and 1/rms; TE's keeps its input in the model dtype and 1/rms. The output, which the next
    linear keeps, is counted with that linear."""
    per_token = (shape.hidden * shape.dtype_bytes if transformer_engine else 2 * shape.hidden * FP32) + FP32
    return tokens * per_token


def attention_core_bytes(shape: ActivationShape, mb: MicroBatch, recompute: str, transformer_engine: bool) -> int:
    """What core attention keeps for one micro-batch, its output (linear_proj's input) excluded."""
    b, s, B = mb.rows, mb.width, shape.dtype_bytes
    if transformer_engine:  # flash attention: q, k, v and per-head log-sum-exp, no s x s tensor
        return mb.tokens * (B * (shape.q + 2 * shape.kv) + FP32 * shape.heads)
    if recompute == "selective":  # checkpointed: its inputs q, k and (a view keeping) the whole qkv output
        return mb.tokens * B * (shape.q + shape.kv + (shape.q + 2 * shape.kv))
    # megatron's unfused attention: q and K/V repeated to every query head, the causal mask, the
    # softmax output in fp32 and (below fp32) its copy in the model dtype for the second bmm
    probs = b * shape.heads * s * s * (FP32 + (B if B < FP32 else 0))
    return mb.tokens * B * 3 * shape.q + probs + s * s


def rope_bytes(shape: ActivationShape, mb: MicroBatch) -> int:
    """Unfused RoPE keeps cos and sin for q and for k: four [s, head_dim] tables per layer."""
    return 4 * mb.width * shape.head_dim * shape.dtype_bytes


def layer_saved_bytes(shape: ActivationShape, mb: MicroBatch, recompute: str, transformer_engine: bool) -> int:
    """One transformer layer's saved activations for one micro-batch, without recomputation
    except `selective` (full recomputation is handled by `stage_saved_bytes`)."""
    B, tokens = shape.dtype_bytes, mb.tokens
    residual_tokens = tokens // shape.sequence_shards
    norm_and_output = 2 * (norm_saved_bytes(shape, residual_tokens, transformer_engine)
                           + residual_tokens * shape.hidden * B)  # the norm's output feeds qkv / fc1
    attention = attention_core_bytes(shape, mb, recompute, transformer_engine) + tokens * shape.q * B
    # SwiGLU: fc1's output [gate; up], silu(gate), up + 0 (megatron's glu offset) and their product
    mlp = tokens * shape.ffn * B * (2 + 3)
    return norm_and_output + attention + rope_bytes(shape, mb) + mlp


def output_layer_saved_bytes(config: Config, shape: ActivationShape, mb: MicroBatch, vocab_shard: int,
                             transformer_engine: bool) -> int:
    """The last stage: the final norm, the fused output layer's copy of the hidden states
    (gathered over the sequence under SP; fp8 operands with the FP8 output layer) and its
    per-token log-normaliser and entropy."""
    final_norm = norm_saved_bytes(shape, mb.tokens // shape.sequence_shards, transformer_engine)
    if config.model.fp8_output_layer:
        operands = mb.tokens * shape.hidden + vocab_shard * shape.hidden  # one byte per element
    else:
        operands = mb.tokens * shape.hidden * shape.dtype_bytes
    return final_norm + operands + 2 * mb.tokens * FP32


def stage_saved_bytes(config: Config, arch: ModelArch, lay: Layout, stage: int, target: Target) -> int:
    """Saved activations of one micro-batch on one rank of `stage`."""
    shape, mb = activation_shape(config, arch, lay.tp), micro_batch(config, lay, stage)
    layers = arch.num_layers // lay.pp
    recompute, te = config.model.recompute, target.transformer_engine
    if recompute == "full":  # each layer keeps its input only, and the RoPE frequencies are kept once
        saved = layers * (mb.tokens // shape.sequence_shards) * shape.hidden * shape.dtype_bytes
        saved += mb.width * shape.head_dim * FP32
    else:
        saved = layers * layer_saved_bytes(shape, mb, recompute, te)
    if stage == 0:
        saved += mb.tokens * TOKEN_ID  # the embedding keeps the token ids
    if stage == lay.pp - 1:
        vocab_shard = arch.padded_vocab_size(config.model.vocab_pad_multiple) // lay.tp
        saved += output_layer_saved_bytes(config, shape, mb, vocab_shard, te)
    return saved


def recompute_working_bytes(config: Config, arch: ModelArch, lay: Layout, stage: int, target: Target) -> int:
    """What recomputation rebuilds during one layer's backward: all of it (full), or its core
    attention (selective)."""
    shape, mb = activation_shape(config, arch, lay.tp), micro_batch(config, lay, stage)
    recompute, te = config.model.recompute, target.transformer_engine
    if recompute == "full":
        return layer_saved_bytes(shape, mb, "none", te)
    if recompute == "selective":
        return attention_core_bytes(shape, mb, "none", te)
    return 0


def output_layer_workspace_bytes(config: Config, arch: ModelArch, lay: Layout, stage: int) -> int:
    """The fused output layer's backward: one [chunk, V/TP] fp32 logits block, the fp32 [V/TP, h]
    weight-gradient accumulator and the hidden-state gradient (superrl/ops/fused_linear.py)."""
    if stage != lay.pp - 1:
        return 0
    shape, mb = activation_shape(config, arch, lay.tp), micro_batch(config, lay, stage)
    vocab_shard = arch.padded_vocab_size(config.model.vocab_pad_multiple) // lay.tp
    chunk = config.model.logprob_chunk_size or default_chunk_size(vocab_shard, getattr(torch, config.model.dtype))
    return (min(chunk, mb.tokens) * vocab_shard * FP32 + vocab_shard * shape.hidden * FP32
            + mb.tokens * shape.hidden * shape.dtype_bytes)


def activation_items(config: Config, arch: ModelArch, lay: Layout, stage: int, target: Target) -> list:
    mb = micro_batch(config, lay, stage)
    saved = stage_saved_bytes(config, arch, lay, stage, target)
    attention = "flash" if target.transformer_engine else "unfused"
    items = [Item(f"activations: {mb.in_flight} x {mb.rows} rows x {mb.width} tokens "
                  f"(recompute={config.model.recompute}, {attention} attention)", mb.in_flight * saved, BACKWARD)]
    working = recompute_working_bytes(config, arch, lay, stage, target)
    if working:
        items.append(Item(f"recomputed in one layer's backward ({config.model.recompute})", working, BACKWARD))
    workspace = output_layer_workspace_bytes(config, arch, lay, stage)
    if workspace:
        items.append(Item("output layer backward: logits chunk, fp32 weight grad", workspace, BACKWARD))
    return items


# ---- rollout engine ---------------------------------------------------------------------------

def hf_parameter_numel(arch: ModelArch) -> int:
    """Elements of the whole HF model (unpadded vocabulary): what the embedded engine holds."""
    return sum(math.prod(shape) for shape in hf_tensor_shapes(arch).values())


def gemm_weight_numel(arch: ModelArch) -> int:
    """The embedded engine's GEMM operands: lm_head and every layer's projections (no norms, biases)."""
    per_layer = sum(math.prod(shape) for name, shape in hf_tensor_shapes(arch).items()
                    if name.startswith("model.layers.0.") and name.endswith("proj.weight"))
    return arch.vocab_size * arch.hidden_size + arch.num_layers * per_layer


def sequences_per_replica(config: Config, replicas: int) -> int:
    """The largest replica's share of a step: prompts are split over the replicas, the first ones
    taking one more when the split is uneven (trainer/rollout_placement.py)."""
    return ceil_div(config.trainer.prompts_per_step, replicas) * config.rollout.n


def kv_bytes_per_token(arch: ModelArch, kv_heads: int, dtype_bytes: int) -> int:
    return arch.num_layers * 2 * kv_heads * arch.head_dim * dtype_bytes


def embedded_kv_cache_shape(config: Config, replicas: int) -> tuple:
    """(slots, positions) of the embedded engine's KV cache after a step: slots = the sequences it
    decodes together, capped by rollout.max_batch_size (evaluation may fill every slot); positions
    = the longest prompt + max_tokens, rounded up (embedded.py grows it, never shrinks it)."""
    sequences = sequences_per_replica(config, replicas)
    if config.data.eval_files and config.trainer.eval_every > 0:
        sequences = max(sequences, config.rollout.max_batch_size)
    positions = round_up(config.data.max_prompt_len + config.rollout.max_tokens, CACHE_ROUNDING)
    return min(config.rollout.max_batch_size, sequences), positions


def embedded_engine_items(config: Config, arch: ModelArch, lay: Layout, target: Target) -> list:
    """The embedded engine (one per model-parallel group, the whole model on its first rank): its
    weights, its KV cache as embedded.py allocates it, and one prefill batch's working set."""
    dtype = engine_dtype(config)
    B = DTYPE_BYTES[dtype]
    slots, positions = embedded_kv_cache_shape(config, lay.dp)
    items = [Item(f"engine weights (embedded, whole model, {dtype})", hf_parameter_numel(arch) * B, ROLLOUT),
             Item(f"engine KV cache ({slots} slots x {positions} positions)",
                  slots * positions * kv_bytes_per_token(arch, arch.num_kv_heads, B), ROLLOUT)]
    if target.engine_gemm_copies:
        items.append(Item("engine GEMM weight copies (no oneDNN)", gemm_weight_numel(arch) * B, ROLLOUT))
    # packed prompt tokens: hidden states, qkv and its padded copy for attention, gate/up, silu * up
    tokens = min(EMBEDDED_PREFILL_TOKENS, slots * config.data.max_prompt_len)
    qkv = (arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim
    per_token = B * (2 * arch.hidden_size + 2 * qkv + 3 * arch.ffn_hidden_size)
    items.append(Item(f"engine prefill working set ({tokens} tokens)", tokens * per_token, ROLLOUT))
    return items


def vllm_weight_numel(arch: ModelArch, tp: int) -> int:
    """One vLLM TP rank's weights: heads and the MLP split over TP, the vocabulary padded and
    split, norms replicated."""
    h, d = arch.hidden_size, arch.head_dim
    qkv = (arch.num_heads + 2 * arch.num_kv_heads) // tp * d  # launch checks: TP divides both head counts
    attention = qkv * h + (qkv if arch.qkv_bias else 0) + arch.num_heads // tp * d * h
    layer = 2 * h + (2 * d if arch.qk_norm else 0) + attention + 3 * arch.ffn_hidden_size // tp * h
    vocab = round_up(arch.vocab_size, VLLM_VOCAB_PADDING) // tp * h
    return arch.num_layers * layer + h + vocab * (1 if arch.tied_embeddings else 2)


def vllm_engine_items(config: Config, arch: ModelArch, lay: Layout, target: Target) -> tuple:
    """vLLM reserves rollout.gpu_memory_utilization of the GPU for its weights, activations and a
    KV cache that fills the rest. Returns (items, problems, warnings)."""
    tp = engine_tensor_parallel_size(config)
    B = DTYPE_BYTES[engine_dtype(config)]
    reserved = int(config.rollout.gpu_memory_utilization * target.memory_bytes)
    weights = vllm_weight_numel(arch, tp) * B
    context = round_up(engine_max_model_len(config), VLLM_BLOCK_TOKENS)
    per_sequence = context * kv_bytes_per_token(arch, arch.num_kv_heads // tp, B)
    sequences = sequences_per_replica(config, lay.world // tp)
    available = reserved - weights
    items = [Item(f"vLLM reservation ({config.rollout.gpu_memory_utilization} x GPU)", reserved, ROLLOUT),
             Item(f"engine weights (vLLM TP{tp}, {engine_dtype(config)})", weights, INSIDE),
             Item(f"KV cache for {sequences} sequences x {context} tokens", sequences * per_sequence, INSIDE),
             Item("left for KV cache after the weights", max(available, 0), INSIDE)]
    problems, warnings = [], []
    if available < per_sequence:
        problems.append(f"vLLM cannot start: rollout.gpu_memory_utilization={config.rollout.gpu_memory_utilization} "
                        f"reserves {reserved / GiB:.2f} GiB, its weights take {weights / GiB:.2f} GiB, and one "
                        f"sequence of max_model_len={context} needs {per_sequence / GiB:.3f} GiB of KV cache")
    elif available < sequences * per_sequence:
        warnings.append(f"vLLM's KV cache holds {available // per_sequence} of the {sequences} sequences at "
                        f"max_model_len={context} (the rest wait their turn: slower rollouts, not an out-of-memory); "
                        "vLLM's own activation and CUDA-graph workspace also comes out of the reservation")
    return items, problems, warnings


# ---- the plan ---------------------------------------------------------------------------------

def engine_on_stage(config: Config, stage: int) -> bool:
    """vLLM: every rank holds an engine shard; embedded: the first rank of each model-parallel group."""
    return config.rollout.engine == "vllm" or stage == 0


def stage_plan(config: Config, arch: ModelArch, lay: Layout, stage: int, target: Target) -> MemoryPlan:
    params = stage_params(config, arch, lay, stage)
    # the critic's forward, backward and step come after the actor's (their activations and
    # temporaries are not held at once), and need no more: no vocabulary logits
    items = (trainer_state_items(config, arch, lay, stage) + activation_items(config, arch, lay, stage, target)
             + update_items(config, params, target))
    problems, warnings = [], []
    if engine_on_stage(config, stage):
        if config.rollout.engine == "vllm":
            engine_items, problems, warnings = vllm_engine_items(config, arch, lay, target)
        else:
            engine_items = embedded_engine_items(config, arch, lay, target)
        items += engine_items
    sleeps = config.rollout.engine == "vllm" and config.rollout.colocate and target.on_gpu
    rank = f"PP stage {stage} of {lay.pp}" + (" (holds the embedded engine)"
                                              if config.rollout.engine == "embedded" and stage == 0 else "")
    return MemoryPlan(_summary(config, arch, lay), rank, items, target.memory_bytes,
                      "GPU" if target.on_gpu else "host", sleeps, problems, warnings)


def _summary(config: Config, arch: ModelArch, lay: Layout) -> str:
    params = hf_parameter_numel(arch)
    engine = config.rollout.engine
    if engine == "vllm":
        tp = engine_tensor_parallel_size(config)
        engine += f" TP{tp} x {lay.world // tp} replicas"
    return (f"memory plan: {arch.name} ({_count(params)} params), world {lay.world} = TP{lay.tp} x PP{lay.pp} "
            f"x DP{lay.dp}, model {config.model.dtype}, engine {engine} ({engine_dtype(config)})")


def plan_memory(config: Config, arch: ModelArch, world_size: int, target: Target) -> MemoryPlan:
    """The plan of the rank with the largest peak (every PP stage is planned). `config` has passed
    `validate_launch` for this world size."""
    lay = layout(config, world_size)
    return max((stage_plan(config, arch, lay, stage, target) for stage in range(lay.pp)),
               key=lambda plan: (plan.peak_bytes, plan.training_bytes))


# ---- the trainer's start-up check ---------------------------------------------------------------

def local_target(config: Config) -> Target:
    """This process's device. On CUDA: the GPU torchrun gives this rank (LOCAL_RANK), its total
    memory, and the layer spec the model will use. On CPU the memory is the host's, which the plan
    does not describe (see check_memory_plan)."""
    from superrl.models.gpt import use_transformer_engine
    from superrl.rollout.gemm import onednn_linear_works

    te = use_transformer_engine(config.model.transformer_engine)
    if torch.cuda.is_available():
        device = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        return Target(torch.cuda.get_device_properties(device).total_memory, te)
    host_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    copies = not onednn_linear_works(getattr(torch, engine_dtype(config)))
    return Target(host_bytes, te, on_gpu=False, engine_gemm_copies=copies)


def check_memory_plan(config: Config, arch: ModelArch, world_size: int, target: Optional[Target] = None) -> MemoryPlan:
    """Plan this run on this device (`target`: by default `local_target`), before any process
    group or model exists; on a GPU refuse a plan that does not fit (MemoryPlanError, with the
    table).

    On CPU the plan is computed but not enforced: host memory is shared by every rank on the host
    and also holds what the plan leaves out (the Python / torch / megatron runtime, datasets,
    tokenizers, reward workers), so a per-GPU budget says nothing about it."""
    target = target or local_target(config)
    plan = plan_memory(config, arch, world_size, target)
    if target.on_gpu and not plan.fits:
        raise MemoryPlanError("this run does not fit its GPUs (python -m superrl.plan prints the same plan):\n"
                              + plan.table())
    return plan
