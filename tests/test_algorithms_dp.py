"""DP-global aggregation with real gloo all-reduces: 2 in-process ranks (threads) and one torchrun
world (DP2 vs DP1 on the same global batch)."""
import threading
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from dist_harness import run_torchrun
from superrl.algorithms import (AdaptiveSwitch, LogSigmaWeights, SwitchConfig,
                                reinforce_pp_advantages)
from test_algorithms_hybrid import GATES, SPLITS, random_batch, random_cfg, run_micro_batches

WORLD = 2


def run_threads(fn, world_size: int = WORLD) -> list:
    """Run fn(rank, group) on `world_size` threads joined by a real gloo group."""
    store = dist.HashStore()
    results, errors = [None] * world_size, []

    def target(rank):
        try:
            group = dist.ProcessGroupGloo(store, rank, world_size, timedelta(seconds=30))
            results[rank] = fn(rank, group)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(rank,), daemon=True) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    assert all(r is not None for r in results), "a rank did not finish"
    return results


def test_reinforce_pp_uses_global_batch_statistics():
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.4, 0.9], [0.0, 0.0, 0.0], [3.0, 1.0, 0.0]],
                           dtype=torch.float64)
    full = reinforce_pp_advantages(rewards)
    shards = run_threads(lambda rank, group: reinforce_pp_advantages(rewards[2 * rank:2 * rank + 2],
                                                                     group=group))
    torch.testing.assert_close(torch.cat(shards), full, rtol=0, atol=1e-14)


def _shard(batch: dict, rank: int) -> dict:
    """Rank r holds prompts 2r, 2r+1 (rows of their responses and expert rows), locally indexed."""
    prompts = torch.tensor([2 * rank, 2 * rank + 1])
    rows = torch.isin(batch["prompt_index"], prompts)
    expert_rows = torch.isin(batch["expert_prompt_index"], prompts)
    shard = {key: value[rows] for key, value in batch.items() if not key.startswith("expert")}
    shard.update({key: value[expert_rows] for key, value in batch.items() if key.startswith("expert")})
    shard["prompt_index"] = shard["prompt_index"] - 2 * rank
    shard["expert_prompt_index"] = shard["expert_prompt_index"] - 2 * rank
    return shard


def _decide(gates, group=None):
    rewards = torch.tensor([[1.0] if gate else [0.0] for gate in gates])
    return AdaptiveSwitch(SwitchConfig(mode="per_prompt")).decide(rewards, step=0, group=group)


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize("weighting", ["hard_gate", "fixed", "log_sigma", "entropy"])
def test_two_dp_shards_with_micro_batches_sum_to_full_batch(weighting, loss_agg):
    cfg, batch = random_cfg(weighting, loss_agg), random_batch()
    full_loss, grad, expert_grad, metrics = run_micro_batches(
        cfg, batch, _decide(GATES), *SPLITS, log_sigma=LogSigmaWeights(floor=-0.5).double())

    def rank_fn(rank, group):
        shard = _shard(batch, rank)
        n, ne = shard["mask"].shape[0], shard["expert_mask"].shape[0]
        splits = ([slice(0, 2), slice(2, n)], [slice(0, 1), slice(1, ne)]) if rank == 0 else \
            ([slice(0, n)], [slice(0, ne)])  # ranks may run different numbers of micro-batches
        decision = _decide(GATES[2 * rank:2 * rank + 2], group)
        return run_micro_batches(cfg, shard, decision, *splits, group=group,
                                 log_sigma=LogSigmaWeights(floor=-0.5).double())

    (loss0, grad0, egrad0, m0), (loss1, grad1, egrad1, m1) = run_threads(rank_fn)
    assert (loss0 + loss1).item() == pytest.approx(full_loss.item(), abs=1e-12)
    rows0 = torch.isin(batch["prompt_index"], torch.tensor([0, 1]))
    erows0 = torch.isin(batch["expert_prompt_index"], torch.tensor([0, 1]))
    torch.testing.assert_close(grad0, grad[rows0], rtol=0, atol=1e-14)
    torch.testing.assert_close(grad1, grad[~rows0], rtol=0, atol=1e-14)
    torch.testing.assert_close(egrad0, expert_grad[erows0], rtol=0, atol=1e-14)
    torch.testing.assert_close(egrad1, expert_grad[~erows0], rtol=0, atol=1e-14)
    for key, value in metrics.items():
        assert (m0[key] + m1[key]).item() == pytest.approx(value.item(), abs=1e-12), key


def test_torchrun_dp2_matches_dp1():
    """One real torchrun world: switch decisions, sft_fraction, loss and grads of DP2 == DP1."""
    results = run_torchrun("algo_dp_worker.py", nproc=2)
    for rank, result in enumerate(results):
        assert result["world_size"] == 2
        for check, (got, expected) in result["checks"].items():
            assert got == pytest.approx(expected, abs=1e-10), f"rank {rank}: {check}"
    # every rank took identical switch decisions (window state, transitions)
    assert results[0]["switch_state"] == results[1]["switch_state"]
    assert results[0]["switch_state"]["transitions"], "the window sequence should switch"
