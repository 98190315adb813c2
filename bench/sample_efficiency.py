"""SuperRL vs GRPO, SFT and hybrids on a sparse-reward task at CPU scale (README.md, "Sample efficiency").

    python bench/sample_efficiency.py                  # the full benchmark (~50 min on the shared 2-core box)
    python bench/sample_efficiency.py --quick          # smoke run: 1 seed, a few steps, results in the run dir

Task. `tools/make_arith_dataset.py` GSM8K-schema word problems with 1-digit numbers. A tiny Llama
(`tools/make_tiny_model.py --hidden 128 --layers 2 --heads 4 --kv-heads 2 --vocab 512`) is warm-started
ONCE with plain SFT on 1-step problems (one add or subtract, "5 - 3 = 2 / #### 2"), so it answers
every question in one line. Every arm then trains on 2-step problems: a correct answer needs two
lines ("5 + 8 = 13 / 13 - 8 = 5 / #### 5"), which the warm-started model samples only when the
one-step answer happens to coincide (reward/success_rate ~5-10% at temperature 1: sparse).
Held-out sets: `arith_id` (2-step, excluded from training) and `arith_ood` (3-step: more steps than
any training problem). Accuracy = greedy decoding scored by the gsm8k reward (the trainer's
in-run eval, `eval/<source>/accuracy` in metrics.jsonl); the warm start's final eval is step 0.

Arms (one YAML each under examples/sample_efficiency/, all sharing every key but
`algorithm.switch` / `algorithm.hybrid`; checked before anything runs):
    grpo           plain GRPO (switch off)
    sft_only       SFT on the expert answer of every prompt for the whole budget
    sft_then_grpo  sft_only for half the budget, then grpo from that checkpoint (same total steps)
    probe          SuperRL v1 (probe rollout decides once for the run), hard gate
    per_prompt     SuperRL v2 per-prompt hard gate c(x) = 1[max_k R_k > eps]
    adv_gate       c(x) = 1[max_k |A_k| > eps], hard gate
    window         EMA success-rate switch with hysteresis, hard gate
    log_sigma      per_prompt switch + learnable uncertainty weighting of L_PG and L_SFT
Switch/hybrid settings are the library defaults (no per-arm tuning).

Fairness. Identical model, warm start, data, prompts per step (8), rollout n (8), temperature,
max_tokens, optimizer, lr and number of optimizer steps for every arm. The one shared lr (5e-4) is
the largest of {2e-3, 1e-3, 5e-4} at which plain GRPO stayed stable in every 100-step pilot
(`--arms grpo --seeds 0 --lr X`; at 2e-3 its entropy collapsed to a deterministic policy, at 1e-3
it collapsed to zero reward from 2 of 4 pilot warm starts): the search was spent on the baseline
only, none on the SuperRL arms.

Metrics. steps to target = first eval step whose held-out in-distribution accuracy >= --target
(0.15, fixed before the full run: ~2-3x the warm start's accuracy and above every eval of the
one-seed pilots, whose curves stayed within 0.02-0.14; "not reached" counts as such and is never
imputed in the mean); final ID / OOD accuracy = the eval at the last step; mean +- std over seeds
(population std).
Claims checked: SuperRL arm reaches the target in >= 40% fewer steps than GRPO (if GRPO misses it
in some seed its steps are taken as the budget, making the reduction a lower bound), and has a
higher final OOD accuracy than GRPO (the report adds the standard error of that difference over
seeds, so a gap inside seed noise is called so).

Sizes (chosen so the whole run fits 60 min on the 2-core box with 2 runs in parallel; see
--help): warm start 600 steps x 32 prompts (data-parallel over 2 processes, ~4 min); each arm 80
steps x 8 prompts x 8 samples, eval every 10 steps on 200 ID + 100 OOD problems; 3 seeds (data
order and sampling; the warm start is shared). 27 training processes in all (sft_then_grpo has two
per seed), 2 at a time. Measured with other jobs on the box: 1.7 s a GRPO step, 2.2 s a step of the
arms with SFT rows, ~45 s per run of start-up + 10 evals + final checkpoint; extrapolated total
~49 min (less on an idle box). `--steps`, `--seeds`, `--eval-every` scale it.

Outputs: docs/results/sample_efficiency.{md,png,json} (table, accuracy-vs-step plot, all numbers);
runs under --out-dir (default runs/sample_efficiency). --reuse keeps finished runs (it does not
check that their settings match) and only runs what is missing. One arm by hand, with the same
settings: bash examples/sample_efficiency/run_arm.sh ARM [SEED].
"""
import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from superrl.config import load_config  # noqa: E402

CONFIGS = ROOT / "examples" / "sample_efficiency"
ID_KEY, OOD_KEY = "eval/arith_id/accuracy", "eval/arith_ood/accuracy"
# arm -> phases (config name, fraction of the step budget); phases run back to back on one model
ARMS = {
    "grpo": [("grpo", 1.0)],
    "sft_only": [("sft_only", 1.0)],
    "sft_then_grpo": [("sft_only", 0.5), ("grpo", 0.5)],
    "probe": [("probe", 1.0)],
    "per_prompt": [("per_prompt", 1.0)],
    "adv_gate": [("adv_gate", 1.0)],
    "window": [("window", 1.0)],
    "log_sigma": [("log_sigma", 1.0)],
}
SUPERRL_ARMS = ("probe", "per_prompt", "adv_gate", "window", "log_sigma")
CLAIM_REDUCTION = 0.4  # SuperRL's claim: >= 40% fewer optimizer steps to the same held-out accuracy
# (file, make_arith_dataset.py arguments); eval sets exclude the training questions
DATA = {
    "warmup_train": ["--level", "2", "--steps", "1", "--digits", "1", "--n", "3000", "--seed", "0",
                     "--data-source", "arith_warm"],
    "train": ["--level", "2", "--digits", "1", "--n", "3000", "--seed", "0", "--data-source", "arith_train"],
    "eval_id": ["--level", "2", "--digits", "1", "--n", "200", "--seed", "1", "--data-source", "arith_id",
                "--exclude", "{data}/train.jsonl"],
    "eval_ood": ["--level", "2", "--steps", "3", "--digits", "1", "--n", "100", "--seed", "2",
                 "--data-source", "arith_ood"],
}
MODEL_ARGS = ["--arch", "llama", "--hidden", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2",
              "--vocab", "512", "--seed", "0"]
ARM_ONLY_KEYS = ("algorithm.switch", "algorithm.hybrid")  # the only keys arms may differ in
PER_RUN_KEYS = ("model.megatron_dir", "trainer.run_dir")


# ------------------------------------------------------------------ set-up
def run_logged(cmd: list, log: Path) -> float:
    """Run a command from the repo root with one thread, output to `log`; returns wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {code}; log {log}:\n{tail}")
    return time.perf_counter() - start


def prepare(out: Path) -> None:
    """Model and data, made locally (skipped when present)."""
    if not (out / "model" / "config.json").exists():
        run_logged([sys.executable, "tools/make_tiny_model.py", "--out-dir", str(out / "model"), *MODEL_ARGS],
                   out / "logs" / "model.log")
    data = out / "data"
    for name, args in DATA.items():
        if not (data / f"{name}.jsonl").exists():
            args = [a.format(data=data) for a in args]
            run_logged([sys.executable, "tools/make_arith_dataset.py", *args, "--out", str(data / f"{name}.jsonl")],
                       out / "logs" / f"data_{name}.log")


def common_overrides(out: Path) -> list:
    data = out / "data"
    return [f"model.hf_dir={out / 'model'}",
            f"data.eval_files=[{data / 'eval_id.jsonl'},{data / 'eval_ood.jsonl'}]"]


def check_fairness(arm_names) -> None:
    """Every arm config must equal every other outside the switch/hybrid sections."""
    def shared(name):
        flat = _flatten(dataclasses.asdict(load_config(str(CONFIGS / f"{name}.yaml"))))
        return {k: v for k, v in flat.items()
                if not k.startswith(ARM_ONLY_KEYS) and k not in PER_RUN_KEYS}
    names = sorted({cfg for arm in arm_names for cfg, _ in ARMS[arm]})
    reference = shared(names[0])
    for name in names[1:]:
        other = shared(name)
        diff = {k for k in reference.keys() | other.keys() if reference.get(k) != other.get(k)}
        if diff:
            raise SystemExit(f"examples/sample_efficiency/{name}.yaml differs from {names[0]}.yaml in "
                             f"{sorted(diff)}: arms may differ only in {ARM_ONLY_KEYS}")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def train_cmd(config: str, overrides: list, nproc: int = 1) -> list:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
              if nproc > 1 else [sys.executable])
    return [*launch, "-m", "superrl.train", "--config", str(CONFIGS / f"{config}.yaml"), *overrides]


def finished(run_dir: Path, steps: int) -> bool:
    """A run that logged its last step and saved its final checkpoint (what --reuse keeps)."""
    try:
        rows = read_rows(run_dir)
    except FileNotFoundError:
        return False
    return any(r.get("step") == steps for r in rows) and (run_dir / "checkpoints" / f"step_{steps}").is_dir()


def read_rows(run_dir: Path) -> list:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def warm_start(out: Path, args) -> dict:
    run_dir, steps = out / "warmup", args.warmup_steps
    wall = 0.0
    if not (args.reuse and finished(run_dir, steps)):
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = common_overrides(out) + [
            f"data.train_files=[{out / 'data' / 'warmup_train.jsonl'}]", f"trainer.run_dir={run_dir}",
            "trainer.seed=0", f"trainer.total_steps={steps}", f"trainer.eval_every={steps}",
            f"trainer.save_every={steps}"]
        # the only run at that time: data-parallel over min(jobs, 2) processes (same global batch)
        wall = run_logged(train_cmd("warmup", overrides, nproc=min(args.jobs, 2)), run_dir.with_suffix(".log"))
    last = [r for r in read_rows(run_dir) if r.get("step") == steps][-1]
    return {"checkpoint": str(run_dir / "checkpoints" / f"step_{steps}"), "steps": steps, "wall_s": wall,
            "id_accuracy": last[ID_KEY], "ood_accuracy": last[OOD_KEY],
            "final_train_reward": last["reward/mean"]}


# ------------------------------------------------------------------ one arm x seed
def phase_steps(arm: str, budget: int) -> list:
    steps = [round(budget * fraction) for _, fraction in ARMS[arm]]
    steps[-1] = budget - sum(steps[:-1])
    return steps


def run_arm(arm: str, seed: int, out: Path, warm: dict, args) -> dict:
    """All phases of one arm for one seed; returns its record (curve, per-phase info)."""
    record = {"arm": arm, "seed": seed, "phases": [], "status": "ok"}
    init, offset = warm["checkpoint"], 0
    curve = [(0, warm["id_accuracy"], warm["ood_accuracy"])]
    try:
        for index, ((config, _), steps) in enumerate(zip(ARMS[arm], phase_steps(arm, args.steps))):
            run_dir = out / f"seed{seed}" / arm
            if len(ARMS[arm]) > 1:
                run_dir = run_dir / f"phase{index + 1}_{config}"
            wall = 0.0
            if not (args.reuse and finished(run_dir, steps)):
                shutil.rmtree(run_dir, ignore_errors=True)
                overrides = common_overrides(out) + [
                    f"model.megatron_dir={init}", f"data.train_files=[{out / 'data' / 'train.jsonl'}]",
                    f"trainer.run_dir={run_dir}", f"trainer.seed={seed}", f"trainer.total_steps={steps}",
                    f"trainer.eval_every={args.eval_every}"] + ([f"optim.lr={args.lr}"] if args.lr else [])
                wall = run_logged(train_cmd(config, overrides), run_dir.with_suffix(".log"))
            rows = read_rows(run_dir)
            steps_rows = [r for r in rows if "step" in r]
            curve += [(offset + r["step"], r[ID_KEY], r[OOD_KEY]) for r in steps_rows if ID_KEY in r]
            events = [r for r in rows if r.get("event") == "probe"]
            record["phases"].append({
                "config": config, "steps": steps, "run_dir": str(run_dir), "wall_s": round(wall, 1),
                "mean_step_s": _mean([r["timing/step_s"] for r in steps_rows]),
                "mean_sft_fraction": _mean([r["switch/sft_fraction"] for r in steps_rows]),
                "mean_train_success_rate": _mean([r["reward/success_rate"] for r in steps_rows]),
                "probe": events[0] if events else None})
            init, offset = str(run_dir / "checkpoints" / f"step_{steps}"), offset + steps
    except RuntimeError as error:
        record.update(status="failed", error=str(error)[-2000:])
    record["curve"] = curve
    record["mean_sft_fraction"] = _weighted([(p["mean_sft_fraction"], p["steps"]) for p in record["phases"]])
    return record


# ------------------------------------------------------------------ aggregation (tested on synthetic curves)
def steps_to_target(curve: list, target: float):
    """First step whose in-distribution accuracy >= target; None if never."""
    return next((step for step, acc_id, _ in curve if acc_id >= target - 1e-12), None)


def mean_std(values: list) -> dict:
    """Mean and population std of the non-None values (None: not reached / failed)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None, "n": 0, "values": values}
    mean = sum(kept) / len(kept)
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in kept) / len(kept)), "n": len(kept),
            "values": values}


def summarise_arm(records: list, target: float, budget: int) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    finals = [r["curve"][-1] for r in ok if r["curve"][-1][0] == budget]
    return {"seeds": len(records), "failed": len(records) - len(ok),
            "steps_to_target": mean_std([steps_to_target(r["curve"], target) for r in ok]),
            "final_id": mean_std([c[1] for c in finals]), "final_ood": mean_std([c[2] for c in finals]),
            "mean_sft_fraction": mean_std([r["mean_sft_fraction"] for r in ok])}


def step_reduction(superrl: list, grpo: list, budget: int):
    """1 - mean steps(SuperRL) / mean steps(GRPO), with GRPO's misses taken as `budget` (a lower
    bound on the reduction, flagged). None when SuperRL missed the target in any seed."""
    if not superrl or any(s is None for s in superrl) or not grpo:
        return None, False
    censored = any(s is None for s in grpo)
    grpo_mean = sum(budget if s is None else s for s in grpo) / len(grpo)
    if grpo_mean == 0:
        return None, False
    return 1.0 - (sum(superrl) / len(superrl)) / grpo_mean, censored


def check_claims(summary: dict, budget: int) -> dict:
    grpo = summary.get("grpo")
    claims = {}
    if grpo is None:
        return claims
    for arm in SUPERRL_ARMS:
        if arm not in summary:
            continue
        s = summary[arm]
        reduction, lower_bound = step_reduction(s["steps_to_target"]["values"], grpo["steps_to_target"]["values"],
                                                budget)
        ood, ood_grpo = s["final_ood"]["mean"], grpo["final_ood"]["mean"]
        diff = None if ood is None or ood_grpo is None else ood - ood_grpo
        se = diff_standard_error(s["final_ood"]["values"], grpo["final_ood"]["values"])
        claims[arm] = {
            "step_reduction": reduction, "step_reduction_is_lower_bound": lower_bound,
            "fewer_steps_claim": reduction is not None and reduction >= CLAIM_REDUCTION,
            "ood_diff": diff, "ood_diff_se": se, "ood_claim": diff is not None and diff > 0,
            "ood_beyond_2se": diff is not None and se is not None and diff > 2 * se}
    return claims


def diff_standard_error(a: list, b: list):
    """Standard error of mean(a) - mean(b) over seeds (sample variances); None with < 2 seeds."""
    a, b = [v for v in a if v is not None], [v for v in b if v is not None]
    if len(a) < 2 or len(b) < 2:
        return None
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)  # noqa: E731
    return math.sqrt(var(a) / len(a) + var(b) / len(b))


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _weighted(pairs):
    pairs = [(v, w) for v, w in pairs if v is not None]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


# ------------------------------------------------------------------ reports
def fmt(stat: dict, digits: int = 2, reached: bool = False) -> str:
    if stat["mean"] is None:
        return "not reached" if reached else "n/a"
    text = f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    if reached:
        text += f" ({stat['n']}/{len(stat['values'])} seeds)"
    return text


def markdown(result: dict) -> str:
    s, warm, claims = result["settings"], result["warm_start"], result["claims"]
    lines = [
        "# Sample efficiency: SuperRL vs GRPO, SFT and hybrids (CPU scale)", "",
        f"Generated by `{result['command']}` in {result['wall_s'] / 60:.1f} min "
        f"({s['jobs']} runs in parallel). Task and method: `bench/sample_efficiency.py`.", "",
        f"* Tiny Llama ({s['model']}), warm-started once with SFT on 1-step problems "
        f"({warm['steps']} steps): step-0 held-out accuracy ID {warm['id_accuracy']:.2f}, OOD {warm['ood_accuracy']:.2f}.",
        f"* Every arm: {s['steps']} optimizer steps x {s['prompts_per_step']} prompts x {s['rollout_n']} samples, "
        f"lr {s['lr']:g}, eval every {s['eval_every']} steps on {s['eval_id_size']} ID (2-step) + "
        f"{s['eval_ood_size']} OOD (3-step) problems; seeds {s['seeds']}.",
        f"* Target: held-out ID accuracy >= {s['target']:.2f} (fixed before the run). "
        "Steps-to-target is averaged over the seeds that reached it; final accuracies over all seeds.", "",
        "| arm | steps to target | final ID accuracy | final OOD accuracy | mean SFT fraction |",
        "| --- | --- | --- | --- | --- |"]
    for arm, a in result["summary"].items():
        failed = f" ({a['failed']} failed)" if a["failed"] else ""
        lines.append(f"| {arm}{failed} | {fmt(a['steps_to_target'], 1, reached=True)} | {fmt(a['final_id'])} | "
                     f"{fmt(a['final_ood'])} | {fmt(a['mean_sft_fraction'])} |")
    lines += ["", "## Claims (SuperRL vs GRPO: >= 40% fewer steps to the target, better OOD accuracy)", ""]
    if not claims:
        lines.append("GRPO was not run: no claim checked.")
    for arm, c in claims.items():
        if c["step_reduction"] is None:
            steps = "did not reach the target in every seed: the >= 40% fewer-steps claim is not met"
        else:
            bound = ">= " if c["step_reduction_is_lower_bound"] else ""
            steps = (f"{bound}{100 * c['step_reduction']:.0f}% fewer steps to the target than GRPO "
                     f"({'meets' if c['fewer_steps_claim'] else 'does not meet'} the >= 40% claim)")
        if c["ood_diff"] is None:
            ood = "OOD n/a"
        else:
            se = "" if c["ood_diff_se"] is None else f" ± {c['ood_diff_se']:.2f} SE"
            verdict = ("not better" if not c["ood_claim"] else "better" if c["ood_beyond_2se"] else
                       "higher, one seed: no noise estimate" if c["ood_diff_se"] is None else
                       "higher, but within 2 SE of seed noise")
            ood = f"final OOD accuracy {c['ood_diff']:+.2f}{se} vs GRPO ({verdict})"
        lines.append(f"* `{arm}`: {steps}; {ood}.")
    probes = [(r["seed"], p["probe"]) for r in result["runs"] for p in r["phases"] if p.get("probe")]
    if probes:
        lines += ["", "Probe decisions (SuperRL v1): " + "; ".join(
            f"seed {seed}: {p['switch/probe_success_fraction']:.2f} of probe prompts solved -> hybrid "
            f"{'on' if p['switch/hybrid_on'] else 'off'}" for seed, p in probes) + "."]
    lines += ["", f"![accuracy vs step]({result['plot_name']})", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    colors = plt.get_cmap("tab10")
    for index, arm in enumerate(result["summary"]):
        curves = [r["curve"] for r in result["runs"] if r["arm"] == arm and r["status"] == "ok"]
        if not curves:
            continue
        steps = sorted({step for curve in curves for step, *_ in curve})
        for ax, column in zip(axes, (1, 2)):
            stats = [mean_std([next((p[column] for p in c if p[0] == step), None) for c in curves]) for step in steps]
            mean = [st["mean"] for st in stats]
            std = [st["std"] for st in stats]
            style = "-" if arm in SUPERRL_ARMS else "--"
            ax.plot(steps, mean, style, color=colors(index), label=arm, marker=".")
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=colors(index), alpha=0.12)
    axes[0].axhline(result["settings"]["target"], color="gray", linestyle=":", label="target")
    for ax, title in zip(axes, ("held-out in-distribution (2-step)", "out-of-distribution (3-step)")):
        ax.set_title(f"{title}: greedy accuracy, mean ± std over seeds", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=80, help="optimizer steps per arm (the budget)")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=600)
    p.add_argument("--target", type=float, default=0.15, help="held-out ID accuracy for steps-to-target")
    p.add_argument("--lr", type=float, default=None, help="override the shared lr of every arm (pilots)")
    p.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel (1 thread each)")
    p.add_argument("--out-dir", default="runs/sample_efficiency")
    p.add_argument("--results-dir", default=None, help="default docs/results (--quick: OUT_DIR/results)")
    p.add_argument("--reuse", action="store_true", help="keep finished runs, only run what is missing")
    p.add_argument("--quick", action="store_true", help="smoke run: seed 0, 10 steps, 20 warm-start steps")
    p.add_argument("--prepare-only", action="store_true",
                   help="make model, data and the shared warm start (kept if finished), then stop "
                        "(examples/sample_efficiency/run_arm.sh uses it)")
    args = p.parse_args(argv)
    args.reuse = args.reuse or args.prepare_only
    if args.quick:
        args.seeds, args.steps, args.eval_every, args.warmup_steps = [0], 10, 5, 20
        if args.out_dir == p.get_default("out_dir"):
            args.out_dir = "runs/sample_efficiency_quick"
    if any(s % args.eval_every for a in args.arms for s in phase_steps(a, args.steps)):
        p.error(f"--eval-every {args.eval_every} must divide every phase's steps ({args.steps} and its halves)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out_dir).resolve()
    results = Path(args.results_dir or (out / "results" if args.quick else ROOT / "docs" / "results")).resolve()
    check_fairness(args.arms)
    reference = load_config(str(CONFIGS / "grpo.yaml"))
    prepare(out)
    print(f"warm start ({args.warmup_steps} steps) ...", flush=True)
    warm = warm_start(out, args)
    print(f"warm start: ID {warm['id_accuracy']:.2f} OOD {warm['ood_accuracy']:.2f} ({warm['wall_s']:.0f} s)", flush=True)
    if args.prepare_only:
        return 0

    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]

    def job(arm_seed):
        arm, seed = arm_seed
        record = run_arm(arm, seed, out, warm, args)
        last = record["curve"][-1]
        print(f"[{time.perf_counter() - start:6.0f} s] {arm:<14} seed {seed}: {record['status']}, "
              f"step {last[0]} ID {last[1]:.2f} OOD {last[2]:.2f}, "
              f"steps to target {steps_to_target(record['curve'], args.target)}", flush=True)
        return record

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(job, jobs))

    summary = {arm: summarise_arm([r for r in runs if r["arm"] == arm], args.target, args.steps) for arm in args.arms}
    result = {
        "command": "python bench/sample_efficiency.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "wall_s": time.perf_counter() - start,
        "settings": {"seeds": args.seeds, "steps": args.steps, "eval_every": args.eval_every, "target": args.target,
                     "warmup_steps": args.warmup_steps, "jobs": args.jobs, "arms": args.arms,
                     "lr": args.lr or reference.optim.lr, "prompts_per_step": reference.trainer.prompts_per_step,
                     "rollout_n": reference.rollout.n, "max_tokens": reference.rollout.max_tokens,
                     "model": " ".join(MODEL_ARGS), "data": DATA,
                     "eval_id_size": int(DATA["eval_id"][DATA["eval_id"].index("--n") + 1]),
                     "eval_ood_size": int(DATA["eval_ood"][DATA["eval_ood"].index("--n") + 1])},
        "warm_start": warm, "summary": summary, "claims": check_claims(summary, args.steps), "runs": runs,
        "plot_name": "sample_efficiency.png"}
    results.mkdir(parents=True, exist_ok=True)
    plot(result, results / "sample_efficiency.png")
    (results / "sample_efficiency.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (results / "sample_efficiency.md").write_text(text)
    print(text)
    print(f"wrote {results}/sample_efficiency.{{md,png,json}} in {result['wall_s'] / 60:.1f} min")
    return 1 if any(r["status"] != "ok" for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
