"""TP2 vs TP1 for the fused ops: each rank runs its vocab shard with a real gloo TP group and
compares outputs and gradients with the single-shard (TP1) result computed locally."""
import torch
import torch.distributed as dist

from dist_harness import write_result
from superrl.ops import fused_linear_logprobs_and_entropy, logprobs_and_entropy

TOKENS, VOCAB, HIDDEN = 29, 46, 13  # odd sizes: V/tp = 23 and T are not multiples of the chunk


def _inputs():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(TOKENS, HIDDEN, generator=gen, dtype=torch.float64)
    weight = torch.randn(VOCAB, HIDDEN, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=gen)
    targets[[0, 5, 17]] = -100
    upstream = (torch.randn(TOKENS, generator=gen, dtype=torch.float64),
                torch.randn(TOKENS, generator=gen, dtype=torch.float64))
    return hidden, weight, targets, upstream


def _run(op, leaves, targets, upstream, **kwargs):
    leaves = [leaf.detach().clone().requires_grad_() for leaf in leaves]
    logprobs, entropy = op(*leaves, targets, **kwargs)
    ((logprobs * upstream[0]).sum() + (entropy * upstream[1]).sum()).backward()
    return [logprobs.detach(), entropy.detach(), *(leaf.grad for leaf in leaves)]


def _rel_errors(tp2, tp1):
    return [float((a - b).abs().max() / b.abs().max()) for a, b in zip(tp2, tp1)]


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tp_group = dist.new_group(list(range(world)))
    hidden, weight, targets, upstream = _inputs()
    shard = slice(rank * VOCAB // world, (rank + 1) * VOCAB // world)

    logits = hidden @ weight.t()
    full = _run(logprobs_and_entropy, [logits], targets, upstream)
    sharded = _run(logprobs_and_entropy, [logits[:, shard]], targets, upstream, tp_group=tp_group)
    logits_errors = _rel_errors(sharded, [full[0], full[1], full[2][:, shard]])

    full = _run(fused_linear_logprobs_and_entropy, [hidden, weight], targets, upstream, chunk_size=4)
    sharded = _run(fused_linear_logprobs_and_entropy, [hidden, weight[shard]], targets, upstream,
                   tp_group=tp_group, chunk_size=4)
    linear_errors = _rel_errors(sharded, [full[0], full[1], full[2], full[3][shard]])

    write_result({"rank": rank, "logits_path": logits_errors, "linear_path": linear_errors})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
