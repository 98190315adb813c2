"""Which rank generates and scores what: engine replicas over the world, prompt shares, and the
data-parallel slices every rank trains on (superrl/trainer/rollout_placement.py)."""
import pytest

from superrl.config import load_config
from superrl.distributed import ParallelContext
from superrl.trainer.rollout_placement import data_parallel_slice, engine_placement, even_split


def contexts(tp: int, pp: int, dp: int) -> list:
    """Every rank's ParallelContext in megatron's order (TP fastest, then DP, then PP)."""
    return [ParallelContext(rank, rank % tp, tp, rank // (tp * dp), pp, (rank // tp) % dp, dp)
            for rank in range(tp * pp * dp)]


@pytest.mark.parametrize("n,parts", [(8, 2), (8, 3), (2, 4), (5, 1)])
def test_even_split_covers_every_prompt_once_in_order(n, parts):
    shares = even_split(n, parts)
    assert [i for share in shares for i in range(n)[share]] == list(range(n))
    sizes = [share.stop - share.start for share in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("engine_tp,want", [(2, [(0, True), (0, False), (1, True), (1, False)]),
                                            (1, [(0, True), (1, True), (2, True), (3, True)]),
                                            (4, [(0, True), (0, False), (0, False), (0, False)])])
def test_vllm_replicas_are_adjacent_ranks_scored_by_their_first(engine_tp, want):
    config = load_config(None, ["rollout.engine=vllm", f"rollout.tensor_parallel_size={engine_tp}", "parallel.tp=2"])
    placements = [engine_placement(config, ctx) for ctx in contexts(tp=2, pp=1, dp=2)]
    assert [(p.replica, p.scores) for p in placements] == want
    assert all(p.runs_engine and p.num_replicas == 4 // engine_tp for p in placements)


def test_embedded_engine_runs_on_each_model_parallel_groups_first_rank():
    config = load_config(None, ["parallel.tp=2", "parallel.pp=2"])
    ranks = contexts(tp=2, pp=2, dp=2)
    placements = [engine_placement(config, ctx) for ctx in ranks]
    assert [ctx.rank for ctx, p in zip(ranks, placements) if p.runs_engine] == [0, 2]  # tp 0, pp 0 of DP 0 and 1
    assert all(p.replica == ctx.dp_rank and p.num_replicas == 2 for ctx, p in zip(ranks, placements))
    # the embedded replica's prompt share is exactly its data-parallel slice
    assert all(p.prompt_slice(8) == data_parallel_slice(8, ctx) for ctx, p in zip(ranks, placements))
