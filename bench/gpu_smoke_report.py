"""The report of bench/gpu_smoke.sh: pass/fail per test (pytest's JUnit XML) and the step times of
every training run (`timing/step_s` in each run_*/metrics.jsonl under pytest's basetemp).

    python bench/gpu_smoke_report.py --out-dir OUT --pytest-status N

Prints both, writes OUT/gpu_smoke.json. Passes when pytest exited 0, no test failed and at least
one ran (a box whose GPU pytest cannot see skips everything: that is a failure here).
"""
import argparse
import json
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def test_results(junit: Path) -> dict:
    """{test id: passed | failed | error | skipped}; {} when pytest wrote no report (killed)."""
    if not junit.exists():
        return {}
    results = {}
    for case in ET.parse(junit).iter("testcase"):
        outcome = next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "passed")
        results[f"{case.get('classname')}::{case.get('name')}"] = {"failure": "failed"}.get(outcome, outcome)
    return results


def step_times(basetemp: Path) -> dict:
    """{run directory name: [timing/step_s per step]} for every training run the tests made."""
    runs = {}
    for metrics in sorted(basetemp.rglob("run_*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        runs[metrics.parent.name] = [row["timing/step_s"] for row in rows]
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--pytest-status", type=int, required=True)
    args = p.parse_args(argv)
    tests, runs = test_results(args.out_dir / "junit.xml"), step_times(args.out_dir / "pytest")
    print("\n== tests/gpu ==")
    for name, outcome in tests.items():
        print(f"{outcome.upper():8s} {name}")
    if not tests:
        print(f"no test report: pytest exited {args.pytest_status} (124: timed out); see {args.out_dir}/pytest.log")
    print("\n== step times (timing/step_s; the first step includes warm-up) ==")
    for name, times in runs.items():
        later = statistics.median(times[1:]) if len(times) > 1 else float("nan")
        print(f"{name:28s} steps={len(times)} first={times[0]:.3f}s median_after_first={later:.3f}s")
    counts = {o: sum(v == o for v in tests.values()) for o in ("passed", "failed", "error", "skipped")}
    ok = args.pytest_status == 0 and counts["passed"] > 0 and counts["failed"] == counts["error"] == 0
    print(f"\nGPU SMOKE {'PASS' if ok else 'FAIL'}: {counts}  (details: {args.out_dir})")
    (args.out_dir / "gpu_smoke.json").write_text(json.dumps(
        {"ok": ok, "pytest_status": args.pytest_status, "counts": counts, "tests": tests, "step_times_s": runs},
        indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
