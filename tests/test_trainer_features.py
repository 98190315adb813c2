"""Optional training features end to end through `python -m superrl.train`, seen only through the
CLI, metrics.jsonl and the checkpoint directory: the KL to the frozen reference (both multi-node
recipes set `algorithm.kl_coef`), the `entropy` and `log_sigma` hybrid weightings, and the
`window` and `probe` switch modes, whose state survives a kill -9 and `trainer.resume=true` bitwise.

Three reference runs, each reused by several tests: `window` + `entropy` with and without KL, and
`probe` + `log_sigma`. The expected numbers are recomputed here from each run's own logged inputs
(success rates, entropies, loss terms), independently of the trainer's code.
"""
import json
import math

import pytest

from trainer_runs import (deterministic_metrics, kill_run, start_training, train, wait_until,
                          write_config)

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("no_leftover_processes")]

STEPS, SAVE_EVERY = 4, 2  # the resumed runs restart from the step-2 checkpoint and replay steps 3-4
LR = 1.0e-3  # optim.lr in trainer_runs.write_config; the log-sigma Adam uses it too

KL_COEF = 1.0
TAU_ON, TAU_OFF, EMA_DECAY, ENTROPY_ALPHA = 0.26, 0.28, 0.8, 0.5
# On at step 1 (ema 0.25 < tau_on), off again after the checkpoint: resuming must restore both the
# EMA and the on/off state. The ema_decay makes the EMA differ from each step's own rate.
WINDOW_ENTROPY = ["algorithm.switch.mode=window", f"algorithm.switch.tau_on={TAU_ON}",
                  f"algorithm.switch.tau_off={TAU_OFF}", f"algorithm.switch.ema_decay={EMA_DECAY}",
                  "algorithm.hybrid.weighting=entropy", f"algorithm.hybrid.entropy_alpha={ENTROPY_ALPHA}"]
WITH_KL = [*WINDOW_ENTROPY, f"algorithm.kl_coef={KL_COEF}"]

PROBE_THRESHOLD, LOG_SIGMA_FLOOR = 0.9, -1.0
# The probe finds rewards sparse (hybrid on for the whole run, so log_sigma always weighs both
# terms); the floor sits below where 4 Adam steps of size ~lr can take s, so no clamp is active.
PROBE_LOG_SIGMA = ["algorithm.switch.mode=probe", "algorithm.switch.probe_prompts=8",
                   f"algorithm.switch.probe_threshold={PROBE_THRESHOLD}", "algorithm.hybrid.weighting=log_sigma",
                   f"algorithm.hybrid.log_sigma_floor={LOG_SIGMA_FLOOR}"]
LOG_SIGMA_INIT_PG, LOG_SIGMA_INIT_SFT = 0.0, 1.0  # algorithm.hybrid defaults
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults


# ---- metrics.jsonl, read as written ----------------------------------------------------------
def logged_lines(run_dir) -> list:
    """Complete lines of metrics.jsonl (a line still being written has no newline yet)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def step_lines(run_dir) -> dict:
    """step -> its raw line, timings included (they tell which process wrote the row)."""
    lines = logged_lines(run_dir)
    return {row["step"]: line for line, row in zip(lines, map(json.loads, lines)) if "step" in row}


def step_rows(run_dir) -> list:
    return [json.loads(line) for line in step_lines(run_dir).values()]


def events(run_dir, name: str) -> list:
    return [row for row in map(json.loads, logged_lines(run_dir)) if row.get("event") == name]


def active(row: dict) -> bool:
    return row["hybrid/active"] > 0.5  # a sum of per-micro-batch shares of 1.0


# ---- runs ------------------------------------------------------------------------------------
def config_for(directory, tiny_llama, arith_files, steps=STEPS) -> str:
    return write_config(directory / "c.yaml", tiny_llama, arith_files, directory / "run", steps=steps,
                        save_every=SAVE_EVERY)


def finished_run(directory, tiny_llama, arith_files, overrides: list, steps=STEPS):
    train(config_for(directory, tiny_llama, arith_files, steps), 1, *overrides)
    rows = step_rows(directory / "run")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    return directory / "run", rows


@pytest.fixture(scope="module")
def kl_run(tmp_path_factory, tiny_llama, arith_files):
    return finished_run(tmp_path_factory.mktemp("kl"), tiny_llama, arith_files, WITH_KL)


@pytest.fixture(scope="module")
def kl_free_run(tmp_path_factory, tiny_llama, arith_files):
    """The same run without KL; 3 steps show where the two part (constant LR: steps do not matter)."""
    return finished_run(tmp_path_factory.mktemp("kl_free"), tiny_llama, arith_files, WINDOW_ENTROPY, steps=3)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, tiny_llama, arith_files):
    return finished_run(tmp_path_factory.mktemp("probe"), tiny_llama, arith_files, PROBE_LOG_SIGMA)


def kill_after_checkpoint_then_resume(tmp_path, tiny_llama, arith_files, overrides: list) -> tuple:
    """kill -9 once step 3 is logged (the step-2 checkpoint is complete: saves are synchronous and
    come before the next step), then resume. Returns (killed run's lines, resumed run's lines)."""
    config = config_for(tmp_path, tiny_llama, arith_files)
    run_dir = tmp_path / "run"
    proc = start_training(tmp_path, config, *overrides)
    wait_until(lambda: 3 in step_lines(run_dir), proc, what="metrics row 3")
    kill_run(proc)
    killed = step_lines(run_dir)
    train(config, 1, *overrides, "trainer.resume=true")
    return killed, step_lines(run_dir)


def assert_resumed_bitwise_from_step_2(killed: dict, resumed: dict, reference_rows: list) -> None:
    assert [json.loads(line)["step"] for line in resumed.values()] == [r["step"] for r in reference_rows]
    for line, want in zip(resumed.values(), reference_rows):
        got = json.loads(line)
        assert deterministic_metrics(got) == deterministic_metrics(want), got["step"]
    # Steps 1-2 were not run again (their timings are the killed run's); step 3 was.
    assert [resumed[s] for s in (1, 2)] == [killed[s] for s in (1, 2)]
    assert resumed[3] != killed[3]


# ---- KL to the frozen reference --------------------------------------------------------------
def test_kl_is_zero_at_step_1_and_positive_after(kl_run):
    """The reference is the initial policy: identical log-probs at step 1, apart afterwards."""
    _, rows = kl_run
    assert rows[0]["actor/kl"] == 0.0
    assert all(r["actor/kl"] > 0 for r in rows[1:]), [r["actor/kl"] for r in rows]


def test_kl_term_enters_the_loss_with_kl_coef(kl_run, kl_free_run):
    (_, kl), (_, free) = kl_run, kl_free_run
    # Step 1: KL and its gradient are exactly 0 at the reference, so it is the KL-free step...
    assert deterministic_metrics(kl[0]) == deterministic_metrics(free[0])
    # ...and step 2 starts from the same policy and rollouts: the losses differ by kl_coef * KL.
    assert kl[1]["reward/success_rate"] == free[1]["reward/success_rate"]
    assert kl[1]["loss/sft"] == pytest.approx(free[1]["loss/sft"], rel=1e-6)
    assert kl[1]["loss/kl"] > 0
    assert kl[1]["loss/total"] - free[1]["loss/total"] == pytest.approx(KL_COEF * kl[1]["loss/kl"], rel=1e-5)
    # Step 2's KL gradient changed the update: step 3's policy differs.
    assert kl[2]["actor/entropy"] != free[2]["actor/entropy"]


# ---- hybrid weightings ------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["kl_run", "kl_free_run"])
def test_entropy_weighting_is_alpha_exp_minus_policy_entropy(which, request):
    """SFT weight alpha * exp(-H), H the batch's mean token entropy (logged as actor/entropy: the
    policy is the same one at the weight's computation and in the loss), while SFT prompts exist."""
    _, rows = request.getfixturevalue(which)
    kl_coef = KL_COEF if which == "kl_run" else 0.0
    assert any(map(active, rows)) and not all(map(active, rows)), "want steps with and without SFT"
    for row in rows:
        want = ENTROPY_ALPHA * math.exp(-row["actor/entropy"]) if active(row) else 0.0
        assert row["hybrid/sft_weight"] == pytest.approx(want, rel=1e-5), row["step"]
        assert row["hybrid/pg_weight"] == pytest.approx(1.0, rel=1e-6), row["step"]
        total = row["loss/pg"] + row["hybrid/sft_weight"] * row["loss/sft"] + kl_coef * row["loss/kl"]
        assert row["loss/total"] == pytest.approx(total, rel=1e-5, abs=1e-9), row["step"]


class ScalarAdam:
    """torch.optim.Adam on one scalar parameter, in float64."""

    def __init__(self, value: float, lr: float):
        self.value, self.lr, self.steps, self.m, self.v = value, lr, 0, 0.0, 0.0

    def step(self, grad: float) -> None:
        self.steps += 1
        self.m = ADAM_BETA1 * self.m + (1 - ADAM_BETA1) * grad
        self.v = ADAM_BETA2 * self.v + (1 - ADAM_BETA2) * grad * grad
        denom = math.sqrt(self.v) / math.sqrt(1 - ADAM_BETA2 ** self.steps) + ADAM_EPS
        self.value -= self.lr / (1 - ADAM_BETA1 ** self.steps) * self.m / denom


def test_log_sigma_weights_follow_their_own_adam_steps(probe_run):
    """L = exp(-2 s_pg) L_PG + exp(-2 s_sft) L_SFT + s_pg + s_sft; s starts at (0, 1) and takes one
    Adam step per optimizer step on dL/ds = 1 - 2 exp(-2 s) L_term, from the logged loss terms."""
    _, rows = probe_run
    s_pg, s_sft = ScalarAdam(LOG_SIGMA_INIT_PG, LR), ScalarAdam(LOG_SIGMA_INIT_SFT, LR)
    for row in rows:
        assert active(row) and row["train/step_skipped"] == 0, row["step"]
        w_pg, w_sft = math.exp(-2 * s_pg.value), math.exp(-2 * s_sft.value)
        assert row["hybrid/pg_weight"] == pytest.approx(w_pg, rel=1e-6), row["step"]
        assert row["hybrid/sft_weight"] == pytest.approx(w_sft, rel=1e-6), row["step"]
        total = w_pg * row["loss/pg"] + w_sft * row["loss/sft"] + s_pg.value + s_sft.value
        assert row["loss/total"] == pytest.approx(total, rel=1e-6), row["step"]
        s_pg.step(1 - 2 * w_pg * row["loss/pg"])
        s_sft.step(1 - 2 * w_sft * row["loss/sft"])
    assert min(s_pg.value, s_sft.value) > LOG_SIGMA_FLOOR  # the floor never clamped
    assert rows[-1]["hybrid/sft_weight"] != pytest.approx(rows[0]["hybrid/sft_weight"], rel=1e-4)
    assert rows[-1]["hybrid/pg_weight"] != pytest.approx(rows[0]["hybrid/pg_weight"], rel=1e-4)


# ---- switch modes and their state across a kill -9 --------------------------------------------
def test_window_is_an_ema_of_success_with_hysteresis(kl_run):
    _, rows = kl_run
    ema, on = None, False
    for row in rows:
        rate = row["switch/success_rate"]
        ema = rate if ema is None else EMA_DECAY * ema + (1 - EMA_DECAY) * rate
        flip = ema < TAU_ON if not on else ema > TAU_OFF
        on ^= flip
        assert row["switch/ema_success"] == pytest.approx(ema, abs=1e-12), row["step"]
        assert row["switch/transitions"] == float(flip), row["step"]
        assert row["switch/hybrid_on"] == float(on), row["step"]
        assert row["switch/sft_fraction"] == float(on), row["step"]  # route=all; every prompt has y*
    # What the resume test needs to mean something: the state saved at step 2 is not a fresh one
    # (on, and an EMA unlike step 3's own rate), and it flips after the checkpoint.
    assert rows[1]["switch/hybrid_on"] == 1.0
    assert rows[2]["switch/ema_success"] != rows[2]["switch/success_rate"]
    assert any(r["switch/transitions"] for r in rows[2:])


def test_window_with_kl_killed_after_checkpoint_resumes_bitwise(tmp_path, tiny_llama, arith_files, kl_run):
    killed, resumed = kill_after_checkpoint_then_resume(tmp_path, tiny_llama, arith_files, WITH_KL)
    assert_resumed_bitwise_from_step_2(killed, resumed, kl_run[1])


def test_probe_decides_once_for_the_whole_run(probe_run):
    run_dir, rows = probe_run
    probes = events(run_dir, "probe")
    assert len(probes) == 1, probes
    probe = probes[0]
    assert probe["switch/probe_prompts"] == 8
    assert probe["switch/hybrid_on"] == float(probe["switch/probe_success_fraction"] < PROBE_THRESHOLD)
    assert probe["switch/hybrid_on"] == 1.0, "this config should find the rewards sparse"
    for row in rows:
        assert row["switch/hybrid_on"] == 1.0 and row["switch/sft_fraction"] == 1.0, row["step"]


def test_probe_with_log_sigma_killed_after_checkpoint_resumes_bitwise(tmp_path, tiny_llama, arith_files,
                                                                       probe_run):
    """The probe decision and the log-sigma weights and their Adam come back from the checkpoint:
    the resumed run probes no second time and replays steps 3-4 bitwise."""
    killed, resumed = kill_after_checkpoint_then_resume(tmp_path, tiny_llama, arith_files, PROBE_LOG_SIGMA)
    assert_resumed_bitwise_from_step_2(killed, resumed, probe_run[1])
    assert events(tmp_path / "run", "probe") == events(probe_run[0], "probe")
