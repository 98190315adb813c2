"""The memory plan (superrl/trainer/memory_plan.py) against the measured peak resident memory of
real `python -m superrl.train` runs on CPU, side by side in one run.

A CPU process's resident memory also holds the Python / torch / megatron / transformers runtime
(hundreds of MB), which the plan does not count. So each case is run twice with the same config
and world: the training run itself, and a baseline process that does everything the trainer's
process does except build the model, optimizer and engine (bench/workers/peak_rss.py). Reported
for rank 0 (the rank holding the embedded engine, the one the plan reports):

  predicted = baseline peak + plan peak
  ratio = measured peak of the run up to its first checkpoint save (start-up and every step) / predicted
  model ratio = (that measured peak - baseline) / plan peak   (the part the plan describes)
  run ratio = the whole run's peak, its checkpoint save included (not planned) / predicted

Every case trains 2 steps (Adam's moments appear at the first optimizer step) with the reference
model on (algorithm.kl_coef > 0); the run saves a checkpoint at its end. Cases: a tiny model
(runtime-dominated), and a small one (~62M params, model memory larger than the runtime) at TP1
and TP2 (2 ranks, torchrun).

  python bench/memory_plan.py [--cases tiny small small_tp2] [--out bench/results/memory_plan.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "workers" / "peak_rss.py"
sys.path.insert(0, str(REPO_ROOT / "tools"))

import make_arith_dataset  # noqa: E402
import make_tiny_model  # noqa: E402

MB = 2**20
MODELS = {
    "tiny": ["--arch", "llama"],  # tools/make_tiny_model.py's defaults: hidden 64, 2 layers, vocab 512
    "small": ["--arch", "qwen2", "--hidden", "1024", "--layers", "4", "--heads", "16", "--kv-heads", "4",
              "--ffn", "2816", "--vocab", "8192"],
}
CASES = {"tiny": ("tiny", 1), "small": ("small", 1), "small_tp2": ("small", 2)}  # name: (model, TP = ranks)


def write_config(directory: Path, hf_dir: Path, data: Path) -> Path:
    path = directory / "config.yaml"
    path.write_text(f"""
model: {{hf_dir: {hf_dir}}}
data: {{train_files: [{data}], max_prompt_len: 64, prompt_template: plain}}
rollout: {{n: 4, max_tokens: 16, temperature: 1.0}}
algorithm: {{kl_coef: 0.01, switch: {{mode: per_prompt}}, hybrid: {{weighting: hard_gate}}}}
optim: {{lr: 1.0e-4, micro_batch_size: 4}}
trainer: {{total_steps: 2, prompts_per_step: 4, run_dir: {directory / "run"}, seed: 0}}
""")
    return path


def peak_rss(mode: str, config: Path, nproc: int, overrides: list) -> dict:
    """Rank 0's high-water marks from one worker run (a plain process at one rank, else torchrun)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", "1")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc > 1 else [sys.executable])
    with tempfile.TemporaryDirectory() as result_dir:
        subprocess.run([*launcher, str(WORKER), "--result-dir", result_dir, mode, "--config", str(config),
                        *overrides], env=env, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(result_dir, "rank0.json").read_text())


def plan(config_path: Path, overrides: list, world_size: int):
    """The plan exactly as the trainer computes it at start-up on this machine."""
    from superrl.config import load_config
    from superrl.hf_config import load_arch
    from superrl.trainer.memory_plan import local_target, plan_memory

    config = load_config(str(config_path), overrides)
    return plan_memory(config, load_arch(config.model.hf_dir), world_size, local_target(config))


def run_case(name: str, work: Path) -> dict:
    model, tp = CASES[name]
    hf_dir, data = work / model, work / "train.jsonl"
    if not hf_dir.exists():
        make_tiny_model.main([*MODELS[model], "--out-dir", str(hf_dir)])
    if not data.exists():
        make_arith_dataset.main(["--level", "1", "--n", "64", "--seed", "0", "--out", str(data)])
    case_dir = work / name
    case_dir.mkdir(exist_ok=True)
    config, overrides = write_config(case_dir, hf_dir, data), [f"parallel.tp={tp}"]
    memory_plan = plan(config, overrides, tp)
    print(memory_plan.table(), flush=True)
    baseline = peak_rss("baseline", config, tp, overrides)["vmhwm_bytes"]
    run = peak_rss("train", config, tp, overrides)
    measured, whole_run, estimate = run["before_save_vmhwm_bytes"], run["vmhwm_bytes"], memory_plan.peak_bytes
    row = {"case": name, "model": model, "tp": tp, "plan_peak_mb": estimate / MB,
           "baseline_mb": baseline / MB, "predicted_mb": (baseline + estimate) / MB,
           "measured_mb": measured / MB, "ratio": measured / (baseline + estimate),
           "model_measured_mb": (measured - baseline) / MB, "model_ratio": (measured - baseline) / estimate,
           "run_measured_mb": whole_run / MB, "run_ratio": whole_run / (baseline + estimate),
           "plan": {item.name: item.bytes / MB for item in memory_plan.items}}
    print(f"{name}: plan {row['plan_peak_mb']:.1f} MB + baseline {row['baseline_mb']:.1f} MB = predicted "
          f"{row['predicted_mb']:.1f} MB; measured up to the checkpoint save {row['measured_mb']:.1f} MB, ratio "
          f"{row['ratio']:.3f}; model part {row['model_measured_mb']:.1f} MB vs plan {row['plan_peak_mb']:.1f} MB, "
          f"ratio {row['model_ratio']:.3f}; whole run (checkpoint save included) {row['run_measured_mb']:.1f} MB, "
          f"ratio {row['run_ratio']:.3f}", flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "memory_plan.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        rows = [run_case(name, Path(work)) for name in args.cases]
    print("\ncase       plan MB  baseline MB  predicted MB  measured MB  ratio  model ratio  run MB  run ratio")
    for r in rows:
        print(f"{r['case']:<10}{r['plan_peak_mb']:>8.1f}{r['baseline_mb']:>13.1f}{r['predicted_mb']:>14.1f}"
              f"{r['measured_mb']:>13.1f}{r['ratio']:>7.3f}{r['model_ratio']:>13.3f}{r['run_measured_mb']:>8.1f}"
              f"{r['run_ratio']:>11.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cases": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
