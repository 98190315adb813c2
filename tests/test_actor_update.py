"""The actor update's throughput paths change no result: rows without gradient are skipped, the
old log-probs come from the training forward, and PPO mini-batches / epochs clip as PPO says."""
import pytest
import torch

from dist_harness import run_torchrun
from trainer_runs import assert_runs_agree, checkpoint_weights, deterministic_metrics, train, write_config
from superrl.trainer.metrics import read_metrics

LOSSES = ("loss/", "reward/", "switch/", "grad_norm", "hybrid/", "rollout/logprob_diff_mean")


def _run(tmp_path, name, tiny_llama, arith_files, *overrides, nproc=1):
    d = tmp_path / name
    d.mkdir()
    config = write_config(d / "c.yaml", tiny_llama, arith_files, d / "run")
    train(config, nproc, *overrides)
    rows = read_metrics(str(d / "run"))
    return rows, checkpoint_weights(d / "run" / "checkpoints" / f"step_{rows[-1]['step']}", d)


@pytest.mark.parametrize("nproc,layout", [(1, ["algorithm.switch.mode=per_prompt"]),
                                          (2, ["algorithm.switch.mode=always_sft"]),
                                          (2, ["algorithm.switch.mode=off", "parallel.pp=2"])],
                         ids=["tp1-per_prompt", "dp2-always_sft", "pp2-grpo"])
def test_skipping_zero_weight_rows_keeps_losses_and_weights(tmp_path, tiny_llama, arith_files, nproc, layout):
    """per_prompt: SFT-routed prompts' rollouts under hard_gate; always_sft: every rollout row (the
    parity guard then checks a probe row of its own); grpo: zero-advantage groups."""
    skipped = _run(tmp_path, "skip", tiny_llama, arith_files, *layout, nproc=nproc)
    full = _run(tmp_path, "full", tiny_llama, arith_files, *layout, "algorithm.skip_zero_weight_rows=false",
                nproc=nproc)
    assert max(r["train/skipped_rollout_row_fraction"] for r in skipped[0]) > 0
    assert all(r["train/skipped_rollout_row_fraction"] == 0 for r in full[0])
    assert_runs_agree(skipped, full, LOSSES)


def test_old_logprobs_from_the_training_forward_are_bitwise(tmp_path, tiny_llama, arith_files):
    """One optimizer step per batch: the training forward's own log-probs are pi_old bit for bit
    (the separate pass is what algorithm.recompute_old_logprobs=true keeps)."""
    fused, fused_weights = _run(tmp_path, "fused", tiny_llama, arith_files, "parallel.tp=2", nproc=2)
    separate, separate_weights = _run(tmp_path, "separate", tiny_llama, arith_files, "parallel.tp=2",
                                      "algorithm.recompute_old_logprobs=true", nproc=2)
    assert [deterministic_metrics(r) for r in fused] == [deterministic_metrics(r) for r in separate]
    assert fused_weights.keys() == separate_weights.keys()
    assert all(torch.equal(fused_weights[k], separate_weights[k]) for k in fused_weights)


def test_ppo_epochs_and_mini_batches_clip_as_counted_by_hand(tmp_path, tiny_llama, arith_files):
    """Two mini-batches x two epochs on DP2: each optimizer step's actor/clip_frac equals the clipped
    tokens counted from a separate forward of the policy that step starts from, against the rollout
    policy's log-probs; the first step (ratio 1) clips nothing, later ones do."""
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run")
    steps = run_torchrun("ppo_clip_counts.py", 2, ["--config", config])[0]["steps"]
    assert len(steps) == 4
    assert steps[0]["got"] == 0.0 and steps[0]["want"] == 0.0
    assert max(s["want"] for s in steps) > 0.05, steps
    for s in steps:
        assert s["got"] == pytest.approx(s["want"], abs=1e-6), steps  # the metric is a float32 share
