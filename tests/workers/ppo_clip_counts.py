"""Worker: one SuperRL step of the real Trainer with two PPO mini-batches and two epochs (pure GRPO,
a large lr so that later steps move the ratio out of the clip range). For each optimizer step it
records the step's actor/clip_frac and the fraction counted by hand: a separate forward of the policy
the step starts from, against the rollout policy's log-probs, in float64."""
import argparse

import torch
from megatron.core import parallel_state as mpu

from dist_harness import write_result
from in_process_trainer import started_trainer
from superrl.algorithms.counts import all_reduce_sum, count_vector
from superrl.config import load_config
from superrl.distributed import init_distributed
from superrl.hf_config import load_arch
from superrl.trainer import loop
from superrl.trainer.batching import ROLLOUT
from superrl.trainer.feature import TrainerFeature
from superrl.trainer.step import IGNORE, forward_outputs

OVERRIDES = ["algorithm.switch.mode=off", "algorithm.ppo_mini_batches=2", "algorithm.ppo_epochs=2",
             "optim.lr=0.03", "optim.warmup_steps=0"]


class ClipCounter(TrainerFeature):
    """Counts, before each optimizer step, the tokens PPO will clip in it."""
    name = "clip_counter"

    def __init__(self, trainer, minis: list):
        self.trainer, self.minis, self.cfg = trainer, minis, trainer.config.algorithm
        self.got, self.want = [], []

    def before_update(self, update) -> None:
        if not self.want:  # every mini-batch's old log-probs are attached; no step taken yet
            self.want.append(self.clipped_fraction(self.minis[0]))

    def after_update(self, metrics: dict) -> None:
        self.got.append(metrics["actor/clip_frac"])
        steps = len(self.minis) * self.cfg.ppo_epochs
        if len(self.got) < steps:
            self.want.append(self.clipped_fraction(self.minis[len(self.got) % len(self.minis)]))

    def clipped_fraction(self, mini) -> float:
        clipped = tokens = 0
        for mb, (new, _) in zip(mini.micro_batches, forward_outputs(self.trainer.state.model, mini.micro_batches)):
            for b in (mb.row_kind == ROLLOUT).nonzero().squeeze(1).tolist():
                mask = mb.targets[b] != IGNORE
                ratio = torch.exp(new[b][mask].double() - mb.old_logprobs[b][mask].double())
                advantage = float(mini.advantages[mb.row_index[b]])
                over = ratio > 1 + self.cfg.clip_high if advantage > 0 else ratio < 1 - self.cfg.clip_low
                clipped += int(over.sum()) if advantage != 0 else 0
                tokens += int(mask.sum())
        clipped, tokens = all_reduce_sum(count_vector(clipped, tokens), mpu.get_data_parallel_group()).tolist()
        return clipped / tokens


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    args = p.parse_args()
    config = load_config(args.config, OVERRIDES)
    arch = load_arch(config.model.hf_dir)
    ctx = init_distributed(1, 1, seed=config.trainer.seed)
    minis = []
    split = loop.split_mini_batches

    def recorded_split(*a, **kw):  # observes the step's mini-batches, changes nothing
        minis[:] = split(*a, **kw)
        return minis

    loop.split_mini_batches = recorded_split
    with started_trainer(config, arch, ctx) as trainer:
        counter = ClipCounter(trainer, minis)
        trainer.features.append(counter)
        trainer.train_step()
    write_result({"steps": [{"got": g, "want": w} for g, w in zip(counter.got, counter.want, strict=True)]})


if __name__ == "__main__":
    main()
