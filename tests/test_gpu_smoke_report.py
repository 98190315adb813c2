"""bench/gpu_smoke.sh parses, and its report reads pass/fail and step times as written by pytest and
the trainer (the GPU runs themselves are tests/gpu, skipped here)."""
import json
import subprocess
import sys

from dist_harness import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import gpu_smoke_report  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.gpu.test_train_gpu" name="test_fp32_steps_on_gpu_match_cpu[1gpu]" />
<testcase classname="tests.gpu.test_train_gpu" name="test_fp32_steps_on_gpu_match_cpu[2gpu-tp2]">
<skipped message="needs 2 CUDA devices" /></testcase>{extra}</testsuite></testsuites>"""
FAILED = """<testcase classname="tests.gpu.test_fp8_gpu" name="test_cublaslt"><failure message="x" /></testcase>"""


def write_run(out, extra: str = "") -> None:
    (out / "junit.xml").write_text(JUNIT.format(extra=extra))
    run = out / "pytest" / "test_fp32_0" / "run_gpu_fp32_1gpu_tp1"
    run.mkdir(parents=True)
    run.joinpath("metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "timing/step_s": t}) + "\n"
                                                     for i, t in enumerate([2.0, 0.5, 0.7])))


def test_script_parses():
    subprocess.run(["bash", "-n", str(REPO_ROOT / "bench" / "gpu_smoke.sh")], check=True)


def test_report_passes_with_a_passed_test_and_lists_step_times(tmp_path, capsys):
    write_run(tmp_path)
    assert gpu_smoke_report.main(["--out-dir", str(tmp_path), "--pytest-status", "0"]) == 0
    report = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert report["counts"] == {"passed": 1, "failed": 0, "error": 0, "skipped": 1}
    assert report["step_times_s"] == {"run_gpu_fp32_1gpu_tp1": [2.0, 0.5, 0.7]}
    assert "median_after_first=0.600s" in capsys.readouterr().out


def test_report_fails_on_a_failed_test_or_when_nothing_ran(tmp_path):
    write_run(tmp_path, FAILED)
    assert gpu_smoke_report.main(["--out-dir", str(tmp_path), "--pytest-status", "1"]) == 1
    assert json.loads((tmp_path / "gpu_smoke.json").read_text())["tests"]["tests.gpu.test_fp8_gpu::test_cublaslt"] == "failed"
    (tmp_path / "junit.xml").unlink()  # pytest killed by the time limit: no report at all
    assert gpu_smoke_report.main(["--out-dir", str(tmp_path), "--pytest-status", "124"]) == 1
