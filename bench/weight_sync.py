"""Weight sync trainer (TP2 x PP2, torchrun, gloo) -> EmbeddedEngine: bytes/s against a plain memcpy
of the same bytes, and peak extra memory against the bucket size, for every transport (`direct`
writes the engine's weights in place: no bucket size applies).

A random-init Qwen2-style model of ~80 MB (untied 16 MB embedding and lm_head, the largest tensors)
is written to a temp dir; bench/workers/sync_measure.py (shared with tests/test_sync.py) runs the
syncs: per (transport, bucket size) it builds a WeightSync, syncs `--repeats` times and reports the
best wall time on the engine owner and every rank's resident high-water mark above its resident
size before the WeightSync existed (glibc set to mmap every tensor-sized allocation, so freed
tensors leave RSS). The memcpy baseline is `dst.copy_(src)` of the same byte count on pre-faulted
tensors, in the owner's process right after the syncs, single-threaded like the sync ranks.

  python bench/weight_sync.py [--bucket-mb 8 32 128 512] [--repeats 5] [--out bench/results/weight_sync.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "workers" / "sync_measure.py"
sys.path.insert(0, str(REPO_ROOT / "tools"))

import make_tiny_model  # noqa: E402

MB = 2**20
MODEL_ARGS = ["--arch", "qwen2", "--hidden", "512", "--layers", "4", "--heads", "8", "--kv-heads", "2",
              "--vocab", "8192"]


def run_workers(nproc: int, args: list) -> list:
    """The sync worker on a `torchrun --standalone` gloo world on CPU; one result per rank."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as result_dir:
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                        str(WORKER), "--result-dir", result_dir, *map(str, args)],
                       env=env, cwd=REPO_ROOT, check=True)
        return [json.loads(Path(result_dir, f"rank{rank}.json").read_text()) for rank in range(nproc)]


def summarise(per_rank: list) -> list:
    owner = per_rank[0]  # global rank 0 is tp_rank 0 / pp_rank 0: the engine owner
    memcpy_gbps = owner["syncs"][0]["bytes"] / owner["memcpy_seconds"] / 1e9
    rows = []
    for i, sync in enumerate(owner["syncs"]):
        peaks = [r["syncs"][i]["peak_extra_bytes"] for r in per_rank]
        sync_gbps = sync["bytes"] / sync["seconds"] / 1e9
        rows.append({
            "transport": sync["transport"], "bucket_mb": sync["bucket_mb"], "buckets": sync["buckets"],
            "model_mb": sync["bytes"] / MB, "largest_tensor_mb": sync["largest_tensor_bytes"] / MB,
            "sync_seconds": sync["seconds"], "sync_gbps": sync_gbps, "memcpy_gbps": memcpy_gbps,
            "sync_vs_memcpy": sync_gbps / memcpy_gbps,
            "peak_extra_mb_per_rank": [p / MB for p in peaks], "peak_extra_mb_max": max(peaks) / MB,
            "peak_extra_vs_bucket": max(peaks) / (sync["bucket_mb"] * MB),
        })
    return rows


def print_table(rows: list) -> None:
    header = (f"{'transport':<14}{'bucket MB':>10}{'buckets':>8}{'sync GB/s':>11}{'memcpy GB/s':>12}"
              f"{'ratio':>7}{'peak extra MB (max rank)':>26}{'peak/bucket':>12}")
    print(header)
    for r in rows:
        bucketed = r["transport"] != "direct"  # direct writes the engine's weights in place
        bucket, per_bucket = (f"{r['bucket_mb']:g}", f"{r['peak_extra_vs_bucket']:.2f}") if bucketed else ("-", "-")
        print(f"{r['transport']:<14}{bucket:>10}{r['buckets']:>8}{r['sync_gbps']:>11.2f}"
              f"{r['memcpy_gbps']:>12.2f}{r['sync_vs_memcpy']:>7.2f}{r['peak_extra_mb_max']:>26.1f}{per_bucket:>12}")
    print(f"model {rows[0]['model_mb']:.1f} MB, largest tensor {rows[0]['largest_tensor_mb']:.1f} MB; "
          "targets: ratio >= 0.5, peak/bucket <= 1 (with bucket >= largest tensor)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bucket-mb", type=float, nargs="+", default=[8, 32, 128, 512])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(REPO_ROOT / "bench/results/weight_sync.json"))
    args = p.parse_args()
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # inherited by the torchrun ranks
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        make_tiny_model.main([*MODEL_ARGS, "--out-dir", model_dir])
        per_rank = run_workers(4, [
            "--hf-dir", model_dir, "--tp", "2", "--pp", "2", "--repeats", args.repeats,
            "--bucket-mb", *args.bucket_mb])
    rows = summarise(per_rank)
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "layout": "tp2 x pp2 (4 ranks, gloo, OMP_NUM_THREADS=1)", "model_args": MODEL_ARGS,
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "repeats": args.repeats,
        "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
