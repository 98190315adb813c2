"""The SuperRL loop: prompts -> rollouts -> rewards -> switch -> hybrid loss -> optimizer step ->
weight sync -> next step. One `Trainer` per rank; every collective is explicit here. Optional parts
(reference KL, learnable log-sigma weights, the probe) attach as features (feature.py)."""
import functools
import time

import torch
from megatron.core import parallel_state as mpu
from transformers import AutoTokenizer

from superrl.algorithms.advantages import compute_advantages
from superrl.algorithms.counts import all_reduce_sum, count_vector
from superrl.algorithms.switch import AdaptiveSwitch
from superrl.config import Config
from superrl.data import PromptDataLoader
from superrl.distributed import ParallelContext
from superrl.hf_config import ModelArch, read_hf_config
from superrl.rewards.scorer import RewardScorer
from superrl.sync import WeightSync
from superrl.trainer import batching, checkpoint
from superrl.trainer.actor_update import update_actor
from superrl.trainer.critic import Critic
from superrl.trainer.engine_setup import bounded, build_engine
from superrl.trainer.evaluate import evaluate
from superrl.trainer.example_data import load_examples
from superrl.trainer.experience import generate_and_score, sampling_params
from superrl.trainer.log_sigma import LearnableLossWeights
from superrl.trainer.metrics import MetricsLogger, resident_memory_mb
from superrl.trainer.mini_batches import split_mini_batches
from superrl.trainer.model_setup import build_train_state
from superrl.trainer.parity import guard_parity, parity_tolerance
from superrl.trainer.preemption import Preempted, PreemptionWatch
from superrl.trainer.probe import RewardProbe
from superrl.trainer.reference_kl import ReferenceKL
from superrl.trainer.reward_shaping import shaped_rewards
from superrl.trainer.rollout_placement import data_parallel_slice, engine_placement
from superrl.weights.megatron_checkpoint import checkpoint_metadata

# Built in this order (the reference model's initialisation draws from the seeded RNG).
FEATURES = (ReferenceKL, LearnableLossWeights, RewardProbe)
# rollout seed = trainer.seed * SEED_STRIDE + step; a stride above any run's step count, so no two
# (trainer.seed, step) pairs share a rollout seed
SEED_STRIDE = 1_000_003


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps with NaN/Inf loss or gradients."""


class Trainer:
    def __init__(self, config: Config, arch: ModelArch, ctx: ParallelContext):
        """`config` has passed every check of superrl.config (trainer/launch.py runs them)."""
        self.config, self.arch, self.ctx = config, arch, ctx
        self.tokenizer = AutoTokenizer.from_pretrained(config.model.hf_dir)
        loaded = load_examples(config, config.data.train_files, self.tokenizer, arch)
        self.example_set = loaded.example_set
        self.data_stats = {"data/skipped_rows": float(len(loaded.rows.skipped)),
                           "data/prompts_dropped": float(self.example_set.prompts_dropped),
                           "data/prompts_truncated": float(self.example_set.prompts_truncated),
                           "data/experts_truncated": float(self.example_set.experts_truncated)}
        self.loader = PromptDataLoader(self.example_set.examples, config.trainer.prompts_per_step,
                                       seed=config.trainer.seed)
        self.state = build_train_state(config, arch)
        self.critic = Critic(config, arch) if config.algorithm.advantage == "gae" else None
        self.features = [feature(config, arch) for feature in FEATURES if feature.enabled(config)]
        self.switch = AdaptiveSwitch(config.algorithm.switch)
        self.placement = engine_placement(config, ctx)
        self.engine = build_engine(config) if self.placement.runs_engine else None
        self.scorer = (RewardScorer(self.example_set.data_sources, config.reward.function,
                                    timeout_s=config.reward.timeout_s) if self.placement.scores else None)
        self.sync = WeightSync(self.state.model, arch, self.engine, config.rollout.sync_bucket_mb)
        self.eval_examples = (load_examples(config, config.data.eval_files, self.tokenizer, arch).example_set.examples
                              if config.data.eval_files else [])
        self.step = 0
        self.skipped_steps = 0  # non-finite steps over the whole run (checkpointed)
        self.consecutive_bad_steps = 0
        self.preemption = None  # a PreemptionWatch while run() runs
        self.saved_step, self.save_s, self.update_s = None, None, None  # for the preemption estimate

    # ---- rollouts ---------------------------------------------------------------------------
    def rollout(self, step_examples: list, seed: int):
        """Rollouts of this rank's data-parallel share of the step's prompts, generated over every
        engine replica (collective over the world)."""
        params = sampling_params(self.config.rollout, seed, self.tokenizer.eos_token_id)
        if self.engine is not None:
            self.engine.wake_up()  # asleep after the previous rollout when nothing synced since (the probe)
        rollouts = generate_and_score(self.engine, self.tokenizer, self.scorer, step_examples, params,
                                      self.placement, self.ctx)
        if self.engine is not None and self.config.rollout.colocate:
            self.engine.sleep()  # vLLM frees its weights and KV cache for the update
        return rollouts

    def sync_engine(self):
        """The engine (awake) gets the trainer's weights."""
        if self.engine is not None:
            self.engine.wake_up()
        return self.sync.sync()

    def rollout_seed(self, step: int) -> int:
        return self.config.trainer.seed * SEED_STRIDE + step

    # ---- one step ---------------------------------------------------------------------------
    def train_step(self) -> dict:
        timings = {}
        t0 = time.perf_counter()
        start_state = self.loader.state_dict(), checkpoint.rng_state()
        step_examples = next(self.loader)
        examples = step_examples[data_parallel_slice(len(step_examples), self.ctx)]
        rollouts = self.rollout(step_examples, self.rollout_seed(self.step))
        timings["timing/rollout_s"] = time.perf_counter() - t0
        self._drop_step_if_preempted(start_state)

        t1 = time.perf_counter()
        metrics, decision, minis = self._update_actor(examples, rollouts)
        timings["timing/train_s"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        metrics.update(self.sync_engine().metrics())
        timings["timing/sync_s"] = time.perf_counter() - t2
        timings["timing/step_s"] = time.perf_counter() - t0
        self.update_s = timings["timing/step_s"] - timings["timing/rollout_s"]
        self.step += 1
        return self._step_metrics(metrics, decision, rollouts, minis, timings)

    def _update_actor(self, examples: list, rollouts) -> tuple:
        """Shaped rewards, advantages, the switch's decision, then the optimizer steps on rollout and
        expert rows; returns (metrics, decision, [MiniBatch])."""
        algorithm, dp_group = self.config.algorithm, mpu.get_data_parallel_group()
        pack = functools.partial(batching.pack_micro_batches, micro_batch_size=self.config.optim.micro_batch_size,
                                 pad_id=self.tokenizer.pad_token_id, uniform_width=self.ctx.pp_size > 1,
                                 max_tokens=self.config.optim.max_tokens_per_micro_batch)
        rows = batching.rollout_rows(examples, rollouts.response_ids)
        advantages, task_advantages, critic_batch, shaping_metrics = self._estimate_advantages(rollouts, rows, pack)
        has_expert = torch.tensor([len(ex.expert_ids) > 0 for ex in examples])
        decision = self.switch.decide(rollouts.rewards, step=self.step, has_expert=has_expert,
                                      advantages=task_advantages, sources=[ex.data_source for ex in examples],
                                      group=dp_group)
        minis = split_mini_batches(algorithm, examples, rollouts, advantages, decision, pack, dp_group)
        metrics = {}
        if self.critic is None or self.critic.trains_actor(self.step):
            # every step follows a weight sync: an engine that disagrees stops the run before the update
            tolerance, step = parity_tolerance(self.config), self.step + 1
            metrics = update_actor(self.state, algorithm, minis, self.features,
                                   lambda pairs: guard_parity(pairs, tolerance, step), pack)
        metrics.update(shaping_metrics)  # with the KL in the reward, its actor/kl replaces the loss's 0
        if critic_batch is not None:
            metrics.update(critic_batch.metrics(rows))
            metrics.update(self.critic.update(minis, critic_batch, pack))
        return metrics, decision, minis

    def _estimate_advantages(self, rollouts, rows, pack) -> tuple:
        """(advantages for the PG terms: [P, K], or [P, K, S] per token from the critic; the task
        reward's advantages for adv_gate or None; the CriticBatch or None; reward-shaping metrics)."""
        rewards, metrics = shaped_rewards(self.config, rollouts, rows, self.features, self.state.model, pack)
        if self.critic is None:
            advantages = self._advantages(rewards)
            # the switch gates on the task reward (docs/policy_losses.md); adv_gate on its advantages
            task_advantages = advantages if rewards is rollouts.rewards else self._advantages(rollouts.rewards)
            return advantages, task_advantages, None, metrics
        critic_batch, kl_metrics = self.critic.estimate(rows, rewards, pack, self.state.model,
                                                        self._reference_in_reward())
        # adv_gate is refused with gae (config.check_critic_settings): no task-reward advantages
        return critic_batch.advantages.view(*rewards.shape, -1), None, critic_batch, {**metrics, **kl_metrics}

    def _reference_in_reward(self):
        """The ReferenceKL feature when the KL goes into the reward, else None."""
        if not self.config.algorithm.kl_in_reward:
            return None
        return next((f for f in self.features if isinstance(f, ReferenceKL)), None)

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        algorithm = self.config.algorithm
        return compute_advantages(rewards, algorithm.advantage, algorithm.norm_by_std, algorithm.adv_eps,
                                  group=mpu.get_data_parallel_group())

    def _step_metrics(self, metrics: dict, decision, rollouts, minis: list, timings: dict) -> dict:
        eps = self.config.algorithm.switch.eps
        rows = [row for mini in minis for row in mini.rollout.rows]
        lengths = torch.tensor([float(len(r.response_ids)) for r in rows])
        truncated = sum(reason == "length" for group in rollouts.finish_reasons for reason in group)
        engine_logprob_sum = sum(sum(response) for group in rollouts.logprobs for response in group)
        local = count_vector(rollouts.rewards.sum(), rollouts.rewards.numel(), (rollouts.rewards > eps).sum(),
                             lengths.sum(), sum(len(r.prompt_ids) for r in rows), truncated,
                             rollouts.reward_metrics.get("reward/errors", 0.0),
                             rollouts.reward_metrics.get("reward/timeouts", 0.0),
                             sum(int(mini.forwarded.sum()) for mini in minis), engine_logprob_sum)
        # reward counts live on one rank per model-parallel group: sum over DP only
        (reward_sum, n, successes, response_tokens, prompt_tokens, truncated, errors, timeouts, forwarded,
         engine_logprob_sum) = all_reduce_sum(local, mpu.get_data_parallel_group()).tolist()
        out = {k: v for k, v in metrics.items() if not k.startswith("step_")}
        out.update(decision.stats)
        out.update(timings)
        out.update(self.data_stats)
        out.update({
            "reward/mean": reward_sum / n, "reward/success_rate": successes / n,
            "reward/errors": errors, "reward/timeouts": timeouts,
            "response/mean_length": response_tokens / n, "response/truncated_fraction": truncated / n,
            "perf/tokens_per_s": (response_tokens + prompt_tokens) / timings["timing/step_s"],
            "train/step_skipped": 1.0 - metrics.get("step_applied", 1.0),
            "train/skipped_rollout_row_fraction": 1.0 - forwarded / n,
            # the engine's sampled tokens: at temperature 1, an estimate of the policy's token
            # entropy over every rollout row (actor/entropy covers the forwarded rows only)
            "rollout/neg_logprob_mean": -engine_logprob_sum / max(response_tokens, 1.0),
            "memory/rss_mb": resident_memory_mb(),
            "train/lr": self.state.optimizer.param_groups[0]["lr"],
        })
        out.setdefault("loss/pg", 0.0)
        out.setdefault("loss/sft", 0.0)
        out.setdefault("actor/kl", 0.0)
        return out

    # ---- eval, checkpoints, the run ---------------------------------------------------------
    def evaluate(self) -> dict:
        """Held-out accuracy on engine replica 0, reported by global rank 0 (one replica suffices:
        weights are equal)."""
        if self.placement.replica != 0 or self.engine is None or not self.eval_examples:
            return {}
        return evaluate(self.engine, self.tokenizer, self.scorer, self.eval_examples,
                        self.config.rollout.max_tokens)

    def checkpoint_metadata(self) -> dict:
        c = self.config
        return checkpoint_metadata(self.arch, read_hf_config(c.model.hf_dir), c.parallel.tp, c.parallel.pp,
                                   self.state.padded_vocab, switch_mode=c.algorithm.switch.mode)

    def trainer_state(self) -> dict:
        return {"step": self.step, "loader": self.loader.state_dict(), "switch": self.switch.state_dict(),
                "skipped_steps": self.skipped_steps,
                "features": {feature.name: feature.state_dict() for feature in self.features}}

    @property
    def critic_state(self):
        """The critic's TrainState, checkpointed with the policy's; None without a critic."""
        return self.critic.state if self.critic is not None else None

    def save(self) -> str:
        start = time.perf_counter()
        path = checkpoint.save_checkpoint(self.config.trainer.run_dir, self.step, self.state,
                                          self.trainer_state(), self.checkpoint_metadata(),
                                          self.config.model.hf_dir, self.config.trainer.keep_last,
                                          critic_state=self.critic_state)
        self.saved_step, self.save_s = self.step, time.perf_counter() - start
        return path

    def resume(self, path: str, meta=None) -> None:
        _, saved = checkpoint.load_checkpoint(path, self.state, self.arch, meta=meta, critic_state=self.critic_state)
        self.step = saved["step"]
        self.loader.load_state_dict(saved["loader"])
        self.switch.load_state_dict(saved["switch"])
        self.skipped_steps = saved["skipped_steps"]
        for feature in self.features:
            feature.load_state_dict(saved["features"].get(feature.name, {}))

    def _resume_point(self) -> tuple:
        """(checkpoint path, its metadata if already validated), or (None, None) to start fresh."""
        t = self.config.trainer
        if t.resume_from:
            return t.resume_from, None
        if t.resume:
            path, meta, skipped = checkpoint.latest_valid_checkpoint(t.run_dir, self.arch,
                                                                     self.state.padded_vocab)
            if self.ctx.rank == 0:
                for reason in skipped:
                    print(f"superrl: not resuming from an invalid checkpoint: {reason}", flush=True)
            return path, meta
        return None, None

    def run(self) -> list:
        t, history = self.config.trainer, []
        path, meta = self._resume_point()
        if path:
            self.resume(path, meta)
        self.sync_engine()  # the engine starts from the trainer's weights, fresh or resumed
        logger = MetricsLogger(self.config, start_step=self.step, enabled=self.ctx.rank == 0)
        self.preemption = PreemptionWatch(t.preemption_grace_s)
        failed = True  # until the loop ends without an exception
        try:
            for feature in self.features:
                feature.start(self, logger)
            while self.step < t.total_steps:
                metrics = self.train_step()
                self._count_bad_step(metrics)
                if t.eval_every and self.step % t.eval_every == 0:
                    metrics.update(self.evaluate())
                logger.log(self.step, metrics)
                history.append(metrics)
                self._stop_if_diverged()
                if (t.save_every and self.step % t.save_every == 0) or self.step == t.total_steps:
                    self.save()
                self._stop_if_preempted()
            failed = False
        finally:
            self.preemption.close()
            logger.close(failed)
        return history

    def _drop_step_if_preempted(self, start_state: tuple) -> None:
        """Collective. After a preemption signal, before the update: when the update and a save
        would not end within trainer.preemption_grace_s, the step never happened (its rollout is
        dropped, data order and RNG rewind) and the last completed step is saved."""
        elapsed = self.preemption.seconds_since_signal()
        if elapsed is None:
            return
        needed = None if self.update_s is None else self.update_s + (self.save_s or 0.0)
        if not self.preemption.fits(elapsed, needed):
            self.loader.load_state_dict(start_state[0])
            checkpoint.set_rng_state(start_state[1])
            self._save_and_exit_preempted(dropped_step=self.step + 1)

    def _stop_if_preempted(self) -> None:
        """Collective, at a step boundary: after a preemption signal, save (once) and exit."""
        if self.preemption.seconds_since_signal() is not None:
            self._save_and_exit_preempted()

    def _save_and_exit_preempted(self, dropped_step=None) -> None:
        run_dir = self.config.trainer.run_dir
        path = self.save() if self.saved_step != self.step else checkpoint.step_dir(run_dir, self.step)
        raise Preempted(path, self.preemption.seconds_since_signal(), dropped_step)

    def _count_bad_step(self, metrics: dict) -> None:
        bad = metrics["train/step_skipped"] > 0
        self.skipped_steps += bad
        self.consecutive_bad_steps = self.consecutive_bad_steps + 1 if bad else 0
        metrics["train/skipped_steps_total"] = float(self.skipped_steps)

    def _stop_if_diverged(self) -> None:
        n = self.consecutive_bad_steps
        if n < self.config.trainer.max_consecutive_bad_steps:
            return
        path = self.save()  # skipped steps left the weights as the last good step made them
        raise TrainingDivergedError(
            f"steps {self.step - n + 1}-{self.step}: {n} consecutive steps had NaN/Inf loss or gradients "
            f"and were skipped (trainer.max_consecutive_bad_steps={n}); stopping. The last good weights "
            f"(step {self.step - n}) are saved in {path}. Lower optim.lr or check data and rewards, then "
            "resume with trainer.resume=true")

    def close(self, failed: bool = False) -> None:
        """Before the process groups go: a vLLM engine tears its groups down with it."""
        if self.scorer is not None:
            self.scorer.close()
        if self.engine is not None:
            with bounded(self.config.trainer.dist_timeout_s, "rollout engine shutdown"):
                self.engine.close(abandon=failed)

