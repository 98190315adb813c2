"""DP2 vs DP1 on the same global batch: every rank also computes the single-process reference.

Writes {"world_size", "checks": {name: [got, expected]}, "switch_state"} per rank.
"""
import torch
import torch.distributed as dist

from dist_harness import write_result
from superrl.algorithms import (AdaptiveSwitch, LogSigmaWeights, SwitchConfig,
                                reinforce_pp_advantages)
from test_algorithms_dp import _shard
from test_algorithms_hybrid import GATES, random_batch, random_cfg, run_micro_batches

NUM_PROMPTS, K = 8, 4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def window_steps(rank: int, world: int, group, checks: dict) -> dict:
    """Per-source window switch over 6 steps; sources differ between ranks on odd steps."""
    cfg = SwitchConfig(mode="window", per_source=True, route="failed", ema_decay=0.5,
                       tau_on=0.2, tau_off=0.4)
    dp_switch, ref_switch = AdaptiveSwitch(cfg), AdaptiveSwitch(cfg)
    gen = torch.Generator().manual_seed(1)
    local = slice(rank * NUM_PROMPTS // world, (rank + 1) * NUM_PROMPTS // world)
    success_prob = {"gsm8k": 0.6, "math": 0.05, "hotpotqa": 0.3}
    for step in range(6):
        if step % 2 == 0:
            sources = ["gsm8k"] * 4 + ["math"] * 2 + ["hotpotqa"] * 2
        else:
            sources = ["gsm8k"] * 4 + ["math"] * 4  # rank 0 sees no math, rank 1 no gsm8k
        if step >= 3:
            success_prob["math"] = 0.9  # math recovers: its hybrid state must turn off again
        probs = torch.tensor([success_prob[s] for s in sources])[:, None].expand(NUM_PROMPTS, K)
        rewards = (torch.rand(NUM_PROMPTS, K, generator=gen) < probs).double()
        has_expert = torch.arange(NUM_PROMPTS) != 5
        ref = ref_switch.decide(rewards, step=step, has_expert=has_expert, sources=sources)
        got = dp_switch.decide(rewards[local], step=step, has_expert=has_expert[local],
                               sources=sources[local], group=group)
        checks[f"window/step{step}/gates"] = [max_diff(got.gates.int(), ref.gates[local].int()), 0.0]
        checks[f"window/step{step}/sft_fraction"] = [got.sft_fraction, ref.sft_fraction]
        for key, value in ref.stats.items():
            checks[f"window/step{step}/{key}"] = [got.stats[key], value]
    assert dp_switch.state_dict() == ref_switch.state_dict()
    return dp_switch.state_dict()


def hybrid_losses(rank: int, group, checks: dict) -> None:
    """Loss, token grads and log-sigma grads of DP2 (2 micro-batches per rank) vs DP1."""
    batch = random_batch(seed=3)
    shard = _shard(batch, rank)
    rows = torch.isin(batch["prompt_index"], torch.tensor([2 * rank, 2 * rank + 1]))
    expert_rows = torch.isin(batch["expert_prompt_index"], torch.tensor([2 * rank, 2 * rank + 1]))

    def decide(gates, group_=None):
        rewards = torch.tensor([[1.0, 0.0] if gate else [0.0, 0.0] for gate in gates])
        return AdaptiveSwitch(SwitchConfig(mode="per_prompt")).decide(rewards, step=0, group=group_)

    for weighting in ("hard_gate", "log_sigma"):
        cfg = random_cfg(weighting, "token_mean")
        ref_sigma, dp_sigma = LogSigmaWeights(floor=-0.5).double(), LogSigmaWeights(floor=-0.5).double()
        ref_decision = decide(GATES)
        ref_loss, ref_grad, ref_egrad, _ = run_micro_batches(
            cfg, batch, ref_decision, [slice(None)], [slice(None)], log_sigma=ref_sigma)
        decision = decide(GATES[2 * rank:2 * rank + 2], group)
        n, ne = shard["mask"].shape[0], shard["expert_mask"].shape[0]
        loss, grad, egrad, _ = run_micro_batches(
            cfg, shard, decision, [slice(0, n // 2), slice(n // 2, n)], [slice(0, 1), slice(1, ne)],
            group=group, log_sigma=dp_sigma)
        dp_sigma.all_reduce_grads(group)
        total = loss.clone()
        dist.all_reduce(total, group=group)
        checks[f"{weighting}/sft_fraction"] = [decision.sft_fraction, ref_decision.sft_fraction]
        checks[f"{weighting}/loss"] = [total.item(), ref_loss.item()]
        checks[f"{weighting}/grad"] = [max_diff(grad, ref_grad[rows]), 0.0]
        checks[f"{weighting}/expert_grad"] = [max_diff(egrad, ref_egrad[expert_rows]), 0.0]
        if weighting == "log_sigma":
            checks["log_sigma/s_pg_grad"] = [dp_sigma.s_pg.grad.item(), ref_sigma.s_pg.grad.item()]
            checks["log_sigma/s_sft_grad"] = [dp_sigma.s_sft.grad.item(), ref_sigma.s_sft.grad.item()]


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    checks: dict = {}
    switch_state = window_steps(rank, world, group, checks)
    hybrid_losses(rank, group, checks)
    rewards = torch.rand(NUM_PROMPTS, K, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    local = slice(rank * NUM_PROMPTS // world, (rank + 1) * NUM_PROMPTS // world)
    checks["reinforce_pp"] = [max_diff(reinforce_pp_advantages(rewards[local], group=group),
                                       reinforce_pp_advantages(rewards)[local]), 0.0]
    write_result({"world_size": world, "checks": checks, "switch_state": switch_state})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
