"""`python -m superrl.plot RUN_DIR [--out FILE.png]`: training curves from metrics.jsonl."""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from superrl.trainer.metrics import read_metrics  # noqa: E402

PANELS = [("reward/mean", "reward/success_rate"), ("switch/sft_fraction",), ("loss/pg", "loss/sft"),
          ("actor/entropy",), ("eval/accuracy",), ("timing/step_s",)]


def plot_run(run_dir: str, out: str) -> str:
    rows = read_metrics(run_dir)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, keys in zip(axes.flat, PANELS):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 40 else None, label=key)
        ax.set_xlabel("step")
        ax.set_title(", ".join(keys), fontsize=9)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def summary(run_dir: str, window: int = 10) -> str:
    """Mean of the headline metrics over the first and the last `window` steps."""
    rows = read_metrics(run_dir)
    lines = []
    for name, part in (("first", rows[:window]), ("last", rows[-window:])):
        means = {key: sum(r[key] for r in part) / len(part)
                 for key in ("reward/mean", "switch/sft_fraction", "loss/pg", "loss/sft") if part}
        steps = f"steps {part[0]['step']}-{part[-1]['step']}" if part else "no steps"
        lines.append(f"{name} {window} ({steps}): " + " ".join(f"{k}={v:.3f}" for k, v in means.items()))
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]
    if evals:
        lines.append("eval/accuracy by step: " + " ".join(f"{s}:{a:.2f}" for s, a in evals))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m superrl.plot", description=__doc__)
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    args = p.parse_args(argv)
    print(summary(args.run_dir))
    print(plot_run(args.run_dir, args.out or os.path.join(args.run_dir, "curves.png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
