"""Rollout/trainer parity guard: does the engine run the trainer's weights?

Every step the trainer recomputes the old-policy log-prob of each sampled token; the engine
returned its own log-prob of the same token (both temperature 1, unfiltered). Right after a weight
sync the two are the same model, so they differ only by numerics: kernels, accumulation order and
precision. A bad sync or a wrong HF<->Megatron mapping shows up as a much larger difference, and
training on such rollouts would silently optimise against a different policy. So each step logs

* `rollout/logprob_diff_mean`, `rollout/logprob_diff_max`: mean / max over every response token of
  the step (the whole data-parallel world) of |engine log-prob - trainer log-prob|;
* `rollout/prob_ratio_max`: max over the same tokens of pi_trainer / pi_engine =
  exp(trainer - engine), the largest importance ratio a rollout correction would have to apply;

and stops the run before the optimizer step when the mean exceeds `rollout.parity_tolerance`.
Expert rows have no engine log-probs and are not compared.
"""
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.algorithms.counts import ProcessGroup, all_reduce_max, all_reduce_sum, count_vector
from superrl.trainer.batching import ROLLOUT
from superrl.trainer.engine_setup import engine_dtype
from superrl.trainer.step import IGNORE

# Defaults of rollout.parity_tolerance (mean |difference|, nats per token), measured on the tiny test
# model (docs/parity_guard.md): a clean fp32 step differs by ~2e-7 (500x below), a clean bf16 one by
# ~6e-4 (80x below; larger models drift more in bf16). One fp32 tensor scaled by 1.01 moves the mean
# by 2e-4 (an MLP projection) to 2e-3 (the embeddings): 1e-3 would have missed most such syncs.
FLOAT32_TOLERANCE = 1e-4
BFLOAT16_TOLERANCE = 5e-2


class ParityError(RuntimeError):
    """The rollout engine and the trainer disagree on the sampled tokens' log-probs after a sync."""


@dataclass(frozen=True)
class ParityStats:
    diff_mean: float
    diff_max: float
    prob_ratio_max: float
    tokens: float  # response tokens compared, over the world

    def metrics(self) -> dict:
        return {"rollout/logprob_diff_mean": self.diff_mean, "rollout/logprob_diff_max": self.diff_max,
                "rollout/prob_ratio_max": self.prob_ratio_max}


def parity_tolerance(config) -> float:
    """`rollout.parity_tolerance`, or the default for the precision the trainer and engine run in:
    bf16 rounding on either side alone moves log-probs by ~1e-2."""
    if config.rollout.parity_tolerance is not None:
        return config.rollout.parity_tolerance
    dtypes = {config.model.dtype, engine_dtype(config)}
    return BFLOAT16_TOLERANCE if "bfloat16" in dtypes else FLOAT32_TOLERANCE


def engine_rows(engine_logprobs: list) -> list:
    """[P][K] per-response log-prob lists -> one list per rollout row, in batching.rollout_rows' order
    (prompt-major), so `MicroBatch.row_index` of a rollout row indexes it."""
    return [response for group in engine_logprobs for response in group]


def engine_logprob_tensor(mb, rows: list) -> torch.Tensor:
    """float64 [b, s] on the host: the engine's log-prob of each response token of `mb`'s rollout rows
    at its target position (0 elsewhere); `rows` as engine_rows gives them."""
    out = torch.zeros(mb.targets.shape, dtype=torch.float64)
    for b in (mb.row_kind == ROLLOUT).nonzero().squeeze(1).tolist():
        positions = (mb.targets[b] != IGNORE).nonzero().squeeze(1)
        engine = rows[int(mb.row_index[b])]
        if len(engine) != len(positions):
            raise ValueError(f"rollout row {int(mb.row_index[b])}: the engine returned {len(engine)} "
                             f"log-probs for {len(positions)} response tokens")
        out[b, positions] = torch.tensor(engine, dtype=torch.float64)
    return out


def token_log_ratios(micro_batches: list, rows: list) -> torch.Tensor:
    """float64 [N]: trainer - engine log-prob of every response token of the rollout rows, on the
    host. Needs the old log-probs attached (last pipeline stage). Tokens whose trainer log-prob is
    not finite are left out: that is the trainer's own numerical failure, and the step is skipped
    as non-finite (docs/fault_tolerance.md); a non-finite engine log-prob still counts."""
    parts = [torch.zeros(0, dtype=torch.float64)]
    for mb in micro_batches:
        response = (mb.targets != IGNORE) & (mb.row_kind == ROLLOUT)[:, None]
        trainer = mb.old_logprobs.detach().to("cpu", torch.float64)[response]
        ratios = trainer - engine_logprob_tensor(mb, rows)[response]
        parts.append(ratios[trainer.isfinite()])
    return torch.cat(parts)


def reduce_parity(log_ratios: torch.Tensor, group: ProcessGroup) -> ParityStats:
    """Collective over `group`: the statistics of every rank's `log_ratios` together (a rank with
    none passes an empty tensor). With no tokens at all nothing disagrees: zeros, ratio 1."""
    diffs = log_ratios.abs()
    total, tokens = all_reduce_sum(count_vector(diffs.sum(), diffs.numel()), group).tolist()
    local_max = [diffs.max() if diffs.numel() else 0.0, log_ratios.max() if diffs.numel() else -math.inf]
    diff_max, log_ratio_max = all_reduce_max(torch.tensor(local_max, dtype=torch.float64), group).tolist()
    if tokens == 0:
        return ParityStats(0.0, 0.0, 1.0, 0.0)
    return ParityStats(total / tokens, diff_max, math.exp(log_ratio_max), tokens)


def measure_parity(pairs: list) -> ParityStats:
    """Collective over the world, once the old log-probs are attached to the micro-batches of each
    (micro_batches, engine_logprobs) pair (their row indices index that pair's engine log-probs,
    [P][K] each: one pair per mini-batch). Only TP rank 0 of the last pipeline
    stage of each replica contributes (the stage that has the log-probs, once per replica: its TP
    peers hold the same values), so every token counts once and every rank receives the same
    numbers from one reduction, and therefore takes the same decision."""
    contributes = mpu.is_pipeline_last_stage() and mpu.get_tensor_model_parallel_rank() == 0
    parts = [token_log_ratios(micro_batches, engine_rows(engine_logprobs)) for micro_batches, engine_logprobs
             in (pairs if contributes else [])]
    log_ratios = torch.cat([torch.zeros(0, dtype=torch.float64)] + parts)
    return reduce_parity(log_ratios, dist.group.WORLD)


def check_parity(stats: ParityStats, tolerance: float, step: int) -> None:
    """Raise ParityError when the engine and the trainer disagree by more than `tolerance` (mean)."""
    if stats.diff_mean <= tolerance:
        return
    raise ParityError(
        f"step {step}: the rollout engine and the trainer disagree on the log-probs of the sampled tokens "
        f"right after a weight sync: mean |engine - trainer| = {stats.diff_mean:.3e}, max = {stats.diff_max:.3e} "
        f"over {int(stats.tokens)} tokens, above rollout.parity_tolerance={tolerance:.3e}. The engine is not "
        "running the trainer's weights: a bad weight sync or a wrong HF<->Megatron mapping. Stopping before "
        "the optimizer step rather than train on rollouts of a corrupted engine. Raise "
        "rollout.parity_tolerance only for a known numerical difference (e.g. another engine precision).")


def guard_parity(pairs: list, tolerance: float, step: int) -> dict:
    """Collective: measure parity (measure_parity's pairs), stop the run on every rank if it fails;
    returns the metrics."""
    stats = measure_parity(pairs)
    check_parity(stats, tolerance, step)
    return stats.metrics()
