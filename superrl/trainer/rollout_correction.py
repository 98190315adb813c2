"""`algorithm.rollout_correction` in the trainer: the engine's log-probs travel with the micro-batches
into the loss (superrl/algorithms/rollout_correction.py weighs each token's PG loss with them), and
each step logs the weights of the forwarded rollout tokens:

* `rollout_correction/weight_mean`, `rollout_correction/weight_max`: token mean / max of w_t (a
  sequence weight counts once per token of its sequence);
* `rollout_correction/masked_fraction`: the share of those tokens with weight 0 (mis).

pi_trainer is the old policy's log-prob as the trainer computes it, the one the loss uses: the
training forward's own (detached) with one optimizer step per batch, else the old-log-prob pass.
"""
import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.algorithms.config import AlgorithmConfig
from superrl.algorithms.rollout_correction import correction_metrics, correction_weights
from superrl.trainer.batching import ROLLOUT
from superrl.trainer.parity import engine_logprob_tensor, engine_rows
from superrl.trainer.step import IGNORE


def attach_engine_logprobs(minis: list) -> None:
    """Every micro-batch of every mini-batch gets `engine_logprobs` [b, s] at its rollout rows'
    response positions (its row indices index the mini-batch's [P][K] engine log-probs)."""
    for mini in minis:
        rows = engine_rows(mini.engine_logprobs)
        for mb in mini.micro_batches:
            mb.engine_logprobs = engine_logprob_tensor(mb, rows)


def correction_step_metrics(cfg: AlgorithmConfig, minis: list) -> dict:
    """Collective over the world, once the old log-probs are attached: the weights' statistics over
    the forwarded rollout tokens of every mini-batch. Only TP rank 0 of the last pipeline stage of
    each replica contributes (it holds the log-probs; its TP peers hold the same), so every token
    counts once and every rank gets the same numbers."""
    contributes = mpu.is_pipeline_last_stage() and mpu.get_tensor_model_parallel_rank() == 0
    parts = [torch.zeros(0, dtype=torch.float64)]
    for mb in (mb for mini in minis for mb in mini.micro_batches) if contributes else ():
        response = (mb.targets != IGNORE) & (mb.row_kind == ROLLOUT)[:, None]
        weights = correction_weights(mb.old_logprobs.cpu(), mb.engine_logprobs, response,
                                     cfg.rollout_correction, cfg.rollout_correction_cap)
        parts.append(weights[response])
    return correction_metrics(torch.cat(parts), dist.group.WORLD)
