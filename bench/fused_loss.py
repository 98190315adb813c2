"""Naive log_softmax+gather+entropy vs the fused ops: forward+backward time and peak memory.

Every (variant, shape) runs in a FRESH process, so one variant's allocator state cannot flatter
another's. Peak memory = resident high-water mark during the timed runs minus the resident size
right after the inputs were allocated (Linux: VmHWM is reset through /proc/self/clear_refs).
Time = min over repeats of forward+backward wall time, plus the process CPU time of that run
(less sensitive to other load on a shared box).

  python bench/fused_loss.py [--quick] [--out bench/results/fused_loss.json]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from process_memory import reset_peak_resident, resident_bytes  # bench/, the script's own dir

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"logits": ("naive_logits", "fused_logits"), "linear": ("naive_linear", "fused_linear")}
FULL_SHAPES = [(2048, 32000), (2048, 151936), (8192, 32000), (8192, 151936)]
QUICK_SHAPES = [(1024, 16384)]
HIDDEN = 896
IGNORED_FRACTION = 0.05  # a few -100 positions, as in real packed RL batches


# ----------------------------------------------------------------------------- worker process
def _naive_outputs(logits, targets):
    import torch
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    picked = log_probs.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    ignored = targets == -100
    return torch.where(ignored, 0, picked), torch.where(ignored, 0, entropy)


def _make_inputs(variant: str, tokens: int, vocab: int, hidden: int):
    import torch
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    targets[torch.rand(tokens, generator=gen) < IGNORED_FRACTION] = -100
    upstream = (torch.randn(tokens, generator=gen), torch.randn(tokens, generator=gen))
    if variant.endswith("logits"):
        leaves = [torch.randn(tokens, vocab, generator=gen).mul_(2).requires_grad_()]
    else:
        leaves = [torch.randn(tokens, hidden, generator=gen).requires_grad_(),
                  torch.randn(vocab, hidden, generator=gen).mul_(hidden ** -0.5).requires_grad_()]
    return leaves, targets, upstream


def _forward(variant: str, leaves, targets):
    from superrl.ops import fused_linear_logprobs_and_entropy, logprobs_and_entropy
    if variant == "naive_logits":
        return _naive_outputs(leaves[0], targets)
    if variant == "fused_logits":
        return logprobs_and_entropy(leaves[0], targets)
    if variant == "naive_linear":
        return _naive_outputs(leaves[0] @ leaves[1].t(), targets)
    return fused_linear_logprobs_and_entropy(leaves[0], leaves[1], targets)


def _one_step(variant, leaves, targets, upstream) -> None:
    for leaf in leaves:
        leaf.grad = None  # each step allocates its gradients afresh, like a training step
    logprobs, entropy = _forward(variant, leaves, targets)
    ((logprobs * upstream[0]).sum() + (entropy * upstream[1]).sum()).backward()


def run_worker(variant: str, tokens: int, vocab: int, hidden: int, repeats: int) -> dict:
    import gc
    # Warm-up on a toy shape: lazy library and thread-pool start-up then counts in the baseline.
    _one_step(variant, *_make_inputs(variant, 64, 512, 32))
    leaves, targets, upstream = _make_inputs(variant, tokens, vocab, hidden)
    gc.collect()
    baseline = resident_bytes("VmRSS")
    reset_peak_resident()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        _one_step(variant, leaves, targets, upstream)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    best = min(range(repeats), key=walls.__getitem__)
    return {"variant": variant, "T": tokens, "V": vocab, "hidden": hidden,
            "peak_extra_bytes": resident_bytes("VmHWM") - baseline, "baseline_rss_bytes": baseline,
            "wall_s": walls[best], "cpu_s": cpus[best], "all_wall_s": walls}


# ----------------------------------------------------------------------------- launcher
def _estimated_peak_bytes(variant: str, tokens: int, vocab: int, hidden: int) -> int:
    """Inputs plus extra peak, from the ratios measured at T=2048 (naive: ~5 [T, V] fp32 buffers
    beyond the inputs), used only to skip runs this machine cannot hold right now."""
    logits_bytes, weight_bytes = tokens * vocab * 4, vocab * hidden * 4
    if variant.startswith("naive"):
        return 6 * logits_bytes + weight_bytes
    if variant == "fused_logits":
        return 2 * logits_bytes + 2 ** 28
    return 3 * weight_bytes + 2 ** 28


def _available_bytes() -> int:
    return _meminfo_bytes("MemAvailable")


def _meminfo_bytes(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/meminfo")


def _spawn(variant: str, tokens: int, vocab: int, hidden: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--tokens", str(tokens),
           "--vocab", str(vocab), "--hidden", str(hidden), "--repeats", str(repeats)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"variant": variant, "T": tokens, "V": vocab, "hidden": hidden,
                "skipped": f"worker exited {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_or_skip(variant, tokens, vocab, hidden, repeats, memory_fraction) -> dict:
    need, have = _estimated_peak_bytes(variant, tokens, vocab, hidden), _available_bytes()
    if need > memory_fraction * have:
        return {"variant": variant, "T": tokens, "V": vocab, "hidden": hidden,
                "skipped": f"needs ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available"}
    print(f"  {variant:13s} T={tokens} V={vocab} ...", file=sys.stderr, flush=True)
    return _spawn(variant, tokens, vocab, hidden, repeats)


def _ratio(fused: dict, naive: dict, key: str):
    if "skipped" in fused or "skipped" in naive:
        return None
    return fused[key] / naive[key]


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _table(rows) -> str:
    head = (f"{'path':7s} {'T':>5s} {'V':>7s} | {'naive MiB':>9s} {'fused MiB':>9s} {'mem x':>6s} | "
            f"{'naive s':>8s} {'fused s':>8s} {'time x':>6s} | {'cpu x':>6s}")
    lines = [head, "-" * len(head)]
    for row in rows:
        naive, fused = row["naive"], row["fused"]
        mib = lambda r: None if "skipped" in r else r["peak_extra_bytes"] / 2**20  # noqa: E731
        sec = lambda r: None if "skipped" in r else r["wall_s"]  # noqa: E731
        lines.append(f"{row['path']:7s} {row['T']:5d} {row['V']:7d} | {_fmt(mib(naive), '9.0f')} "
                     f"{_fmt(mib(fused), '9.0f')} {_fmt(row['memory_ratio'], '6.3f')} | "
                     f"{_fmt(sec(naive), '8.2f')} {_fmt(sec(fused), '8.2f')} "
                     f"{_fmt(row['time_ratio'], '6.2f')} | {_fmt(row['cpu_time_ratio'], '6.2f')}")
    lines += [f"skipped {r[k]['variant']} T={r['T']} V={r['V']}: {r[k]['skipped']}"
              for r in rows for k in ("naive", "fused") if "skipped" in r[k]]
    return "\n".join(lines)


def run_all(shapes, hidden, repeats, memory_fraction):
    rows = []
    for tokens, vocab in shapes:
        for path, (naive_name, fused_name) in VARIANTS.items():
            naive = _run_or_skip(naive_name, tokens, vocab, hidden, repeats, memory_fraction)
            fused = _run_or_skip(fused_name, tokens, vocab, hidden, repeats, memory_fraction)
            rows.append({"path": path, "T": tokens, "V": vocab, "hidden": hidden, "naive": naive,
                         "fused": fused, "memory_ratio": _ratio(fused, naive, "peak_extra_bytes"),
                         "time_ratio": _ratio(fused, naive, "wall_s"),
                         "cpu_time_ratio": _ratio(fused, naive, "cpu_s")})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"one small shape {QUICK_SHAPES}")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench/results/fused_loss.json"))
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per process (min is kept)")
    parser.add_argument("--memory-fraction", type=float, default=0.8,
                        help="skip a run whose estimated peak exceeds this fraction of MemAvailable")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.tokens, args.vocab, args.hidden, args.repeats)))
        return
    rows = run_all(QUICK_SHAPES if args.quick else FULL_SHAPES, args.hidden, args.repeats,
                   args.memory_fraction)
    print(_table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dtype": "float32", "cpu_count": os.cpu_count(),
                               "repeats": args.repeats, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
