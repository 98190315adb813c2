"""Worker: three SuperRL steps of the real Trainer with the KL in the reward and DAPO's overlong
shaping (lr large enough that the later steps' policy has left the reference). Before each update it
recomputes, in float64 loops from a forward of the policy and of the reference over every rollout
row, what the advantages must be: GRPO of R_task + overlong(L) - kl_coef * sum_t k3_t; and the
adv_gate decision on the task reward alone. Each rank writes {"kl_coef", "steps": [{"advantages",
"expected", "gates", "expected_gates", "metrics"}]}; "expected" only where the log-probs live (the
last pipeline stage)."""
import argparse
import math
import statistics

from dist_harness import write_result
from in_process_trainer import started_trainer
from superrl.config import load_config
from superrl.distributed import init_distributed
from superrl.hf_config import load_arch
from superrl.trainer import loop
from superrl.trainer.batching import ROLLOUT
from superrl.trainer.feature import TrainerFeature
from superrl.trainer.step import IGNORE, forward_outputs

KL_COEF, BUFFER, PENALTY = 2.0, 6, 0.5
OVERRIDES = ["algorithm.kl_in_reward=true", f"algorithm.kl_coef={KL_COEF}", "algorithm.kl_estimator=k3",
             f"reward.overlong_buffer_len={BUFFER}", f"reward.overlong_penalty={PENALTY}",
             "algorithm.switch.mode=adv_gate", "optim.lr=0.02", "optim.warmup_steps=0"]


def overlong(length: int, max_tokens: int) -> float:
    start = max_tokens - BUFFER
    return 0.0 if length <= start else -PENALTY * min(length - start, BUFFER) / BUFFER


def grpo(rewards: list, eps: float) -> list:
    if max(rewards) == min(rewards):
        return [0.0] * len(rewards)
    mean, std = statistics.fmean(rewards), statistics.stdev(rewards)
    return [(r - mean) / (std + eps) for r in rewards]


class AdvantageCheck(TrainerFeature):
    """Records, before each step's update, the advantages and gates the trainer took and the ones
    recomputed here (`seen` holds what split_mini_batches was called with)."""
    name = "advantage_check"

    def __init__(self, trainer, seen: dict):
        self.trainer, self.seen, self.steps = trainer, seen, []

    def before_update(self, update) -> None:
        seen, config = self.seen, self.trainer.config
        rows = [row for mini in seen["minis"] for row in mini.rollout.rows]
        kl_sums = self.kl_per_row(rows, seen["pack"])
        step = {"advantages": seen["advantages"].flatten().tolist(), "gates": seen["decision"].gates.tolist()}
        task = seen["rollouts"].rewards
        step["expected_gates"] = [not (max(group) == min(group) and len(ex.expert_ids) > 0)
                                  for group, ex in zip(task.tolist(), seen["examples"])]
        if kl_sums is not None:
            k = task.shape[1]
            shaped = [task.flatten()[i].item() + overlong(len(row.response_ids), config.rollout.max_tokens)
                      - KL_COEF * kl_sums[i] for i, row in enumerate(rows)]
            step["expected"] = [a for p in range(task.shape[0])
                                for a in grpo(shaped[p * k:(p + 1) * k], config.algorithm.adv_eps)]
            step["kl_sum"], step["tokens"] = sum(kl_sums), sum(len(row.response_ids) for row in rows)
        self.steps.append(step)

    def kl_per_row(self, rows: list, pack):
        """sum_t k3(log pi - log pi_ref) of each row in float64 (None off the last stage)."""
        reference = next(f for f in self.trainer.features if f.name == "reference_kl").model
        micro_batches = pack(rows)
        policy = forward_outputs(self.trainer.state.model, micro_batches)
        ref = forward_outputs(reference, micro_batches)
        if not policy:
            return None
        sums = [0.0] * len(rows)
        for mb, (logprobs, _), (ref_logprobs, _) in zip(micro_batches, policy, ref):
            for b in (mb.row_kind == ROLLOUT).nonzero().squeeze(1).tolist():
                for t in (mb.targets[b] != IGNORE).nonzero().squeeze(1).tolist():
                    d = float(logprobs[b, t]) - float(ref_logprobs[b, t])
                    sums[int(mb.row_index[b])] += math.exp(-d) - 1.0 + d
        return sums


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    config = load_config(args.config, OVERRIDES + args.overrides)
    arch = load_arch(config.model.hf_dir)
    ctx = init_distributed(config.parallel.tp, config.parallel.pp, seed=config.trainer.seed)
    seen = {}
    split = loop.split_mini_batches

    def recorded_split(cfg, examples, rollouts, advantages, decision, pack, group):  # observes, changes nothing
        seen.update(examples=examples, rollouts=rollouts, advantages=advantages, decision=decision, pack=pack)
        seen["minis"] = split(cfg, examples, rollouts, advantages, decision, pack, group)
        return seen["minis"]

    loop.split_mini_batches = recorded_split
    with started_trainer(config, arch, ctx) as trainer:
        check = AdvantageCheck(trainer, seen)
        trainer.features.append(check)
        for step in range(3):
            metrics = trainer.train_step()
            check.steps[step]["metrics"] = {k: metrics[k] for k in ("actor/kl", "reward/kl_penalty_mean",
                                                                    "reward/overlong_penalty_mean", "loss/kl")}
    write_result({"kl_coef": KL_COEF, "steps": check.steps})


if __name__ == "__main__":
    main()
