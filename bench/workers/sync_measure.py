"""Worker: peak extra memory and wall time of WeightSync for several bucket sizes, plus a memcpy of
the same bytes timed in the same process. Shared by bench/weight_sync.py (reports time ratios) and
tests/test_sync.py (asserts the memory bound; tests never look at the timings). Each rank writes
its result as JSON to RESULT_DIR/rank<RANK>.json.

Peak extra memory = resident high-water mark during the syncs minus the resident size just before
them (Linux: /proc/self/clear_refs resets VmHWM). Launch with MALLOC_MMAP_THRESHOLD_ set low so
glibc maps every tensor-sized allocation and unmaps it on free: RSS then follows live tensors
instead of heap memory malloc keeps after a free. One untimed sync per transport first, so one-off
Python/allocator growth is not charged to a bucket size.
"""
import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from superrl.distributed import init_distributed
from superrl.hf_config import load_arch
from superrl.models.gpt import build_policy_model
from superrl.rollout import EmbeddedEngine
from superrl.rollout.shared_weights import MEMFD_NAME
from superrl.sync import WeightSync, build_plan
from superrl.weights.load import load_hf_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/
from process_memory import reset_peak_resident, resident_bytes  # noqa: E402


def engine_weights_resident_bytes() -> int:
    """Resident pages of this process's mappings of the engine's weights (its memfd arena)."""
    total, in_arena = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            in_arena = MEMFD_NAME in line
        elif in_arena and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def measure_sync(make_sync, repeats: int, largest_tensor_bytes: int) -> dict:
    """Build a WeightSync (its buffers count: the shared-memory one maps its bucket up front) and
    sync `repeats` times; peak extra memory over all of it, best time. Pages of the engine's own
    weights that a rank maps and writes (the direct transport) are not extra memory: not counted."""
    dist.barrier()
    arena_baseline = engine_weights_resident_bytes()
    baseline = resident_bytes("VmRSS")
    reset_peak_resident()
    sync = make_sync()
    seconds = []
    for _ in range(repeats):
        dist.barrier()  # all ranks start together; the sync ends when the owner has applied everything
        seconds.append(sync.sync().seconds)
    peak = resident_bytes("VmHWM")  # before reading smaps: its text is megabytes of Python string
    arena_growth = engine_weights_resident_bytes() - arena_baseline  # it only grows while mapped
    return {"seconds": min(seconds), "peak_extra_bytes": peak - baseline - arena_growth,
            "bytes": sync.total_bytes, "buckets": len(sync.plan), "largest_tensor_bytes": largest_tensor_bytes}


def write_result(result_dir: str, obj: dict) -> None:
    Path(result_dir, f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(obj))


def memcpy_seconds(nbytes: int, repeats: int) -> float:
    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)  # written once so page faults are not timed
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--bucket-mb", type=float, nargs="+", required=True)
    p.add_argument("--transports", nargs="+", default=["collective", "shared_memory", "direct"])
    p.add_argument("--repeats", type=int, default=1)
    # default: where the tests' torchrun launcher (tests/dist_harness.py) collects worker results
    p.add_argument("--result-dir", default=os.environ.get("SUPERRL_TEST_RESULT_DIR"))
    args = p.parse_args()
    if not args.result_dir:
        p.error("--result-dir is required")
    arch = load_arch(args.hf_dir)
    ctx = init_distributed(args.tp, args.pp, seed=0)
    padded_vocab = arch.padded_vocab_size(128)
    model = build_policy_model(arch, args.tp, args.pp, padded_vocab, "off")
    load_hf_weights(model, args.hf_dir, arch, padded_vocab)
    engine = EmbeddedEngine(args.hf_dir) if ctx.tp_rank == 0 and ctx.pp_rank == 0 else None
    largest = max(slot.numel for b in build_plan(arch, args.pp, 2**40, 4) for slot in b.slots) * 4
    results = []
    for transport in args.transports:
        WeightSync(model, arch, engine, args.bucket_mb[0], transport).sync()  # warm-up, unmeasured
        for bucket_mb in args.bucket_mb if transport != "direct" else args.bucket_mb[:1]:  # nothing bucketed
            make_sync = partial(WeightSync, model, arch, engine, bucket_mb, transport)
            results.append({"transport": transport, "bucket_mb": bucket_mb, **measure_sync(make_sync, args.repeats, largest)})
    dist.barrier()
    memcpy = memcpy_seconds(results[0]["bytes"], max(10, args.repeats)) if ctx.rank == 0 else None
    write_result(args.result_dir, {"rank": ctx.rank, "tp_rank": ctx.tp_rank, "pp_rank": ctx.pp_rank,
                  "memcpy_seconds": memcpy, "syncs": results})


if __name__ == "__main__":
    main()
