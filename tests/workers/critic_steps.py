"""Worker: the critic (trainer/critic.py) on a fixed batch of rollout rows: its values, GAE over
them, then N value-loss optimizer steps; reports values, advantages, returns, per-step metrics and
the value head's weights and gradient on every rank."""
import argparse
import functools
from types import SimpleNamespace

import torch
from megatron.core import parallel_state as mpu

from dist_harness import write_result
from superrl.algorithms.counts import global_token_counts
from superrl.config import load_config, validate_parallelism
from superrl.distributed import init_distributed, world_size_from_env
from superrl.hf_config import load_arch
from superrl.models.value import VALUE_HEAD
from superrl.trainer.batching import ROLLOUT, Row, RowSet, pack_micro_batches, target_mask
from superrl.trainer.critic import Critic
from superrl.trainer.step import accumulate_gradients

PROMPTS, K = 4, 2


def fixed_rows(vocab: int, seed: int = 7) -> tuple:
    """PROMPTS x K rollout rows with ragged prompts and responses (one empty), and their rewards."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for p in range(PROMPTS):
        prompt = torch.randint(0, vocab, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        for k in range(K):
            length = 0 if (p, k) == (1, 1) else int(torch.randint(1, 7, (1,), generator=g))
            rows.append((prompt, torch.randint(0, vocab, (length,), generator=g).tolist()))
    return rows, torch.rand(PROMPTS, K, generator=g, dtype=torch.float64)


def head_init(hidden: int) -> tuple:
    """A nonzero head (the same on every rank), so that values depend on the trunk."""
    g = torch.Generator().manual_seed(11)
    return torch.randn(1, hidden, generator=g) * 0.1, torch.randn(1, generator=g) * 0.1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--set", nargs="*", default=[], help="more config overrides, key=value")
    args = p.parse_args()
    config = load_config(None, [f"model.hf_dir={args.hf_dir}", f"parallel.tp={args.tp}", f"parallel.pp={args.pp}",
                                "algorithm.advantage=gae", "algorithm.gamma=0.9", "algorithm.lam=0.8",
                                "critic.optim.lr=0.0001", "critic.cliprange_value=0.05", *args.set])
    arch = load_arch(args.hf_dir)
    validate_parallelism(config, arch, world_size_from_env())
    ctx = init_distributed(args.tp, args.pp, seed=0)
    critic = Critic(config, arch)
    model = critic.state.model.module
    head_was_zero, initial_head = None, None
    if mpu.is_pipeline_last_stage():
        head_was_zero = bool((model.value_head.weight == 0).all() and (model.value_head.bias == 0).all())
        weight, bias = head_init(arch.hidden_size)
        initial_head = {VALUE_HEAD + "weight": weight.tolist(), VALUE_HEAD + "bias": bias.tolist()}
        with torch.no_grad():
            model.value_head.weight.copy_(weight)
            model.value_head.bias.copy_(bias)
        # the optimizer's fp32 main params are what it steps: start them from the same head
        critic.state.optimizer.reload_model_params()

    all_rows, all_rewards = fixed_rows(arch.vocab_size)
    per_dp = PROMPTS // ctx.dp_size
    prompts = slice(ctx.dp_rank * per_dp, (ctx.dp_rank + 1) * per_dp)
    mine = all_rows[prompts.start * K:prompts.stop * K]
    rows = RowSet([Row(ROLLOUT, i, prompt, response) for i, (prompt, response) in enumerate(mine)],
                  torch.arange(per_dp).repeat_interleave(K))
    pack = functools.partial(pack_micro_batches, micro_batch_size=3, pad_id=0, uniform_width=args.pp > 1)

    batch, _ = critic.estimate(rows, all_rewards[prompts], pack, policy=None)
    mini = SimpleNamespace(rollout=rows)
    steps = [critic.update([mini], batch, pack) for _ in range(args.steps)]

    # the head's gradient of one more backward, before any DP reduction matters: TP ranks must agree
    counts = global_token_counts(target_mask(rows.rows), mpu.get_data_parallel_group())
    accumulate_gradients(critic.state, pack(rows.rows), critic._loss_fn(batch.old_values, batch.returns, counts))
    head = {name: param.detach().tolist() for name, param in model.named_parameters() if name.startswith(VALUE_HEAD)}
    head_grad = {name: param.main_grad.detach().tolist() for name, param in model.named_parameters()
                 if name.startswith(VALUE_HEAD)}
    write_result({"dp_rank": ctx.dp_rank, "tp_rank": mpu.get_tensor_model_parallel_rank(),
                  "last_stage": mpu.is_pipeline_last_stage(), "head_was_zero": head_was_zero, "initial_head": initial_head,
                  "rows": [[r.prompt_ids, r.response_ids] for r in rows.rows],
                  "old_values": batch.old_values.tolist(), "returns": batch.returns.tolist(),
                  "advantages": batch.advantages.tolist(), "rewards": all_rewards[prompts].tolist(),
                  "steps": steps, "head": head, "head_grad": head_grad})


if __name__ == "__main__":
    main()
