"""bench/sample_efficiency.py: aggregation and claim checks on synthetic curves (no training), and
the arm configs' fairness check on the real YAML files."""
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sample_efficiency", ROOT / "bench" / "sample_efficiency.py")
se = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(se)


def run(arm, seed, ids, oods=None, every=10, sft=0.5):
    oods = oods or [0.0] * len(ids)
    curve = [(i * every, a, b) for i, (a, b) in enumerate(zip(ids, oods))]
    return {"arm": arm, "seed": seed, "status": "ok", "curve": curve, "mean_sft_fraction": sft}


def test_steps_to_target_is_the_first_eval_at_or_above_target():
    curve = [(0, 0.05, 0.0), (10, 0.19, 0.0), (20, 0.2, 0.0), (30, 0.1, 0.0), (40, 0.3, 0.0)]
    assert se.steps_to_target(curve, 0.2) == 20
    assert se.steps_to_target(curve, 0.05) == 0
    assert se.steps_to_target(curve, 0.31) is None


def test_mean_std_ignores_misses_and_uses_population_std():
    stat = se.mean_std([20, None, 40])
    assert stat["mean"] == 30 and stat["std"] == 10 and stat["n"] == 2 and stat["values"] == [20, None, 40]
    assert se.mean_std([None, None])["mean"] is None


def test_summary_and_claims_on_synthetic_runs():
    budget = 40
    grpo = [run("grpo", 0, [0.0, 0.1, 0.1, 0.2, 0.25], [0.1] * 5),   # target at 30
            run("grpo", 1, [0.0, 0.1, 0.1, 0.1, 0.15], [0.1] * 4 + [0.2])]  # misses it
    fast = [run("per_prompt", 0, [0.0, 0.2, 0.3, 0.3, 0.3], [0.1] * 4 + [0.3]),   # target at 10
            run("per_prompt", 1, [0.0, 0.1, 0.2, 0.3, 0.3], [0.1] * 4 + [0.1])]   # target at 20
    summary = {"grpo": se.summarise_arm(grpo, 0.2, budget), "per_prompt": se.summarise_arm(fast, 0.2, budget)}
    assert summary["grpo"]["steps_to_target"]["values"] == [30, None]
    assert summary["grpo"]["final_id"]["mean"] == pytest.approx(0.2)
    assert summary["per_prompt"]["final_ood"]["mean"] == pytest.approx(0.2)
    claims = se.check_claims(summary, budget)["per_prompt"]
    # GRPO's miss counts as the budget (40): 1 - 15 / 35, a lower bound
    assert claims["step_reduction"] == pytest.approx(1 - 15 / 35)
    assert claims["step_reduction_is_lower_bound"] and claims["fewer_steps_claim"]
    assert claims["ood_diff"] == pytest.approx(0.2 - 0.15) and claims["ood_claim"]
    # seed spread: per_prompt OOD 0.3/0.1, GRPO 0.1/0.2 -> SE = sqrt(0.02/2 + 0.005/2)
    assert claims["ood_diff_se"] == pytest.approx(math.sqrt(0.0125)) and not claims["ood_beyond_2se"]
    text = se.markdown({"settings": {"jobs": 2, "model": "m", "steps": budget, "prompts_per_step": 8,
                                     "rollout_n": 8, "lr": 5e-4, "eval_every": 10, "eval_id_size": 200,
                                     "eval_ood_size": 100, "seeds": [0, 1], "target": 0.2},
                        "warm_start": {"steps": 5, "id_accuracy": 0.0, "ood_accuracy": 0.1},
                        "summary": summary, "claims": se.check_claims(summary, budget), "wall_s": 60,
                        "command": "python bench/sample_efficiency.py", "plot_name": "x.png", "runs": []})
    assert "| grpo | 30.0 ± 0.0 (1/2 seeds) | 0.20 ± 0.05 | 0.15 ± 0.05 |" in text
    assert ">= 57% fewer steps" in text and "within 2 SE of seed noise" in text


def test_a_superrl_arm_that_misses_the_target_fails_the_step_claim():
    reduction, _ = se.step_reduction([10, None], [30, 30], 40)
    assert reduction is None
    reduction, bound = se.step_reduction([20, 20], [30, 30], 40)
    assert math.isclose(reduction, 1 / 3) and not bound


def test_sft_then_grpo_splits_the_budget_and_arm_configs_are_fair():
    assert se.phase_steps("sft_then_grpo", 100) == [50, 50]
    assert se.phase_steps("grpo", 100) == [100]
    se.check_fairness(list(se.ARMS))  # raises SystemExit if an arm differs outside switch/hybrid


def test_finished_run_detection_skips_event_rows(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_2").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"event": "probe", "switch/hybrid_on": 1.0}\n{"step": 1}\n{"step": 2}\n')
    assert se.finished(run_dir, 2)
    assert not se.finished(run_dir, 3)
    assert not se.finished(tmp_path / "missing", 2)
