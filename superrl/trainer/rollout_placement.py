"""Where rollout runs: the engine replicas over the trainer's world, and how a step's prompts and
rollouts move between them and the trainer's data-parallel ranks.

* vLLM: every rank takes part. world / `rollout.tensor_parallel_size` replicas of adjacent ranks
  (vLLM's external-launcher layout, TP fastest, built by every rank from the trainer's own world,
  so no rank waits on a group the others never create). The ranks of a replica generate together.
* embedded: a single-process engine, one per trainer model-parallel group, on its first rank (the
  direct weight sync writes the trainer's TP/PP shards straight into it, with no gather).

A step's prompts are split over the replicas (contiguous, in prompt order); each replica's first
rank scores its share; one all-gather gives every rank the step's rollouts, and each takes its
data-parallel slice. Seeds follow the global prompt index, so samples do not depend on the layout.
"""
from dataclasses import dataclass

import torch.distributed as dist

from superrl.config import Config, engine_tensor_parallel_size
from superrl.distributed import ParallelContext


@dataclass(frozen=True)
class EnginePlacement:
    replica: int  # this rank's engine replica
    num_replicas: int
    runs_engine: bool  # this rank holds an engine (or an engine shard) and calls generate
    scores: bool  # the replica's first rank: it scores its replica's rollouts

    def prompt_slice(self, num_prompts: int) -> slice:
        """This replica's contiguous share of a step's prompts (the first replicas take one more
        when the split is uneven)."""
        return even_split(num_prompts, self.num_replicas)[self.replica]


def even_split(n: int, parts: int) -> list:
    base, extra = divmod(n, parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + base + (part < extra))
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def engine_placement(config: Config, ctx: ParallelContext) -> EnginePlacement:
    if config.rollout.engine == "vllm":
        tp = engine_tensor_parallel_size(config)
        world = ctx.tp_size * ctx.pp_size * ctx.dp_size
        return EnginePlacement(ctx.rank // tp, world // tp, runs_engine=True, scores=ctx.rank % tp == 0)
    owner = ctx.tp_rank == 0 and ctx.pp_rank == 0
    return EnginePlacement(ctx.dp_rank, ctx.dp_size, runs_engine=owner, scores=owner)


def all_gather_rollouts(mine, placement: EnginePlacement) -> list:
    """Collective over the world: the rollouts of every replica that had prompts, in replica order
    (`mine`: this rank's, on a scoring rank; None elsewhere)."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, None if mine is None else (placement.replica, mine))
    return [rollouts for _, rollouts in sorted((item for item in gathered if item is not None), key=lambda item: item[0])]


def data_parallel_slice(num_prompts: int, ctx: ParallelContext) -> slice:
    per_rank = num_prompts // ctx.dp_size  # prompts_per_step % DP == 0 is checked at start-up
    return slice(ctx.dp_rank * per_rank, (ctx.dp_rank + 1) * per_rank)

