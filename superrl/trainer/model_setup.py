"""Model, DDP wrapper, DistributedOptimizer (AdamW) and LR scheduler for one rank, built explicitly.

Loss-normalisation contract: every loss arrives already divided by DP-global counts (the tokens
or sequences of the whole step: all micro-batches on all DP ranks), so the plain SUM of gradients
over micro-batches and DP ranks is the full-batch gradient. This module enforces it: DDP is built
on the model's `calculate_per_token_loss` config (models/gpt.py), under which megatron's schedule
does not divide by the number of micro-batches and DDP sums gradients instead of averaging them,
and `_finalize_grads_without_token_scaling` keeps megatron from rescaling by its own token count.

Precision (`model.dtype`): float32, or bfloat16 through megatron's own mixed precision: bf16
parameters inside `Float16Module` (which casts activations in and the last stage's outputs back to
fp32), gradients reduced into fp32 buffers, and a DistributedOptimizer that keeps fp32 main params
(what AdamW updates and checkpoints hold) and copies them into the bf16 params after each step.
The fused loss computes its softmax in fp32, so log-probs, losses and everything built on them
(advantages, switch statistics, metrics) stay fp32.
"""
from dataclasses import dataclass

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module

from superrl.config import Config, OptimizerSettings
from superrl.hf_config import ModelArch
from superrl.models.cpu_gemm import use_cpu_gemm
from superrl.models.gpt import build_policy_model
from superrl.models.value import build_value_model
from superrl.weights.load import load_hf_weights
from superrl.weights.megatron_checkpoint import load_model_checkpoint


@dataclass
class TrainState:
    model: DistributedDataParallel  # this rank's PP stage (in a Float16Module in bf16), wrapped for DP
    optimizer: object  # megatron DistributedOptimizer (or FP32Optimizer)
    scheduler: OptimizerParamScheduler
    arch: ModelArch
    padded_vocab: int


def _finalize_grads_without_token_scaling(model_chunks, num_tokens=None, **kwargs):
    return finalize_model_grads(model_chunks, num_tokens=None, **kwargs)  # the contract above


def model_dtype(config: Config) -> torch.dtype:
    return getattr(torch, config.model.dtype)


def with_mixed_precision(model):
    """The model as megatron runs it in its configured precision: bf16 inside a Float16Module."""
    return Float16Module(model.config, model) if model.config.bf16 else model


def build_model(config: Config, arch: ModelArch):
    """This rank's stage of the configured model (precision, megatron switches and the CPU GEMM
    backend of its linear layers), weights not loaded."""
    model = build_policy_model(arch, config.parallel.tp, config.parallel.pp,
                               arch.padded_vocab_size(config.model.vocab_pad_multiple), config.model.transformer_engine,
                               model_dtype(config), sequence_parallel=config.parallel.sequence_parallel,
                               recompute=config.model.recompute)
    use_cpu_gemm(model, config.model.cpu_gemm)
    return model


def build_train_state(config: Config, arch: ModelArch, load_weights: bool = True) -> TrainState:
    padded_vocab = arch.padded_vocab_size(config.model.vocab_pad_multiple)
    model = build_model(config, arch)
    model.logprob_chunk_size = config.model.logprob_chunk_size
    if config.model.fp8_output_layer:
        model.use_fp8_output_layer(config.model.fp8_amax_history)
    if load_weights:
        load_initial_weights(model, config, arch, padded_vocab)
    return wrap_for_training(model, config, config.optim, arch, padded_vocab)


def build_critic_state(config: Config, arch: ModelArch) -> TrainState:
    """The critic (models/value.py) in the policy's placement and precision, with `critic.optim`'s
    optimizer; weights from critic.megatron_dir / critic.hf_dir, else the policy's initial ones."""
    padded_vocab = arch.padded_vocab_size(config.model.vocab_pad_multiple)
    model = build_value_model(arch, config.parallel.tp, config.parallel.pp, padded_vocab,
                              config.model.transformer_engine, model_dtype(config),
                              sequence_parallel=config.parallel.sequence_parallel, recompute=config.model.recompute)
    use_cpu_gemm(model, config.model.cpu_gemm)
    critic = config.critic
    if critic.megatron_dir or critic.hf_dir:
        _load_weights(model, critic.megatron_dir, critic.hf_dir, arch, padded_vocab)
    else:
        load_initial_weights(model, config, arch, padded_vocab)
    return wrap_for_training(model, config, critic.optim, arch, padded_vocab)


def wrap_for_training(model, config: Config, settings: OptimizerSettings, arch: ModelArch,
                      padded_vocab: int) -> TrainState:
    """DDP, the optimizer and LR schedule of `settings`, and megatron's step hooks around `model`."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=config.optim.overlap_grad_reduce,
        use_distributed_optimizer=config.optim.use_distributed_optimizer)
    ddp_model = DistributedDataParallel(config=model.config, ddp_config=ddp_config,
                                        module=with_mixed_precision(model))
    optimizer = get_megatron_optimizer(_optimizer_config(config, settings), [ddp_model])
    tconfig = model.config
    tconfig.grad_scale_func = optimizer.scale_loss
    tconfig.no_sync_func = ddp_model.no_sync
    tconfig.finalize_model_grads_func = _finalize_grads_without_token_scaling
    scheduler = _scheduler(settings, config.trainer.total_steps, optimizer)
    return TrainState(ddp_model, optimizer, scheduler, arch, padded_vocab)


def _optimizer_config(config: Config, o: OptimizerSettings) -> OptimizerConfig:
    return OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        bf16=model_dtype(config) == torch.bfloat16, fp16=False,  # bf16: fp32 main params (params_dtype)
        use_distributed_optimizer=config.optim.use_distributed_optimizer)


def _scheduler(o: OptimizerSettings, total_steps: int, optimizer) -> OptimizerParamScheduler:
    steps = max(total_steps, o.warmup_steps + 1)
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0 if o.warmup_steps else o.lr, max_lr=o.lr, min_lr=o.lr,
        lr_warmup_steps=o.warmup_steps, lr_decay_steps=steps, lr_decay_style="constant",
        start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=steps, wd_incr_style="constant")


def load_initial_weights(model, config: Config, arch: ModelArch, padded_vocab: int) -> None:
    """`model.megatron_dir` (any TP x PP, resharded on load) if set, else `model.hf_dir`."""
    _load_weights(model, config.model.megatron_dir, config.model.hf_dir, arch, padded_vocab)


def _load_weights(model, megatron_dir, hf_dir: str, arch: ModelArch, padded_vocab: int) -> None:
    if megatron_dir:
        load_model_checkpoint(model, megatron_dir, arch)
    else:
        load_hf_weights(model, hf_dir, arch, padded_vocab)
