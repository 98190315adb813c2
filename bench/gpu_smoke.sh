#!/usr/bin/env bash
# GPU smoke test, < 10 minutes on any CUDA box once the environment exists: runs tests/gpu (train
# steps on 1 GPU and on 2 GPUs at TP2 in fp32 and bf16 against the fp32 CPU run, the FP8 output
# layer on cuBLASLt, weight sync into the embedded engine), prints pass/fail per test and the
# trainer's step times (metrics.jsonl `timing/step_s`), and writes them to $OUT/gpu_smoke.json.
#
#   bash bench/gpu_smoke.sh                          # builds .venv-gpu as README "Install on a GPU cluster" says
#   SUPERRL_PYTHON=/path/to/python bash bench/gpu_smoke.sh   # an existing environment instead
#
# SUPERRL_SMOKE_OUT (default: a fresh /tmp directory) keeps the logs and run directories.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${SUPERRL_SMOKE_OUT:-$(mktemp -d /tmp/superrl_gpu_smoke.XXXXXX)}
TEST_TIMEOUT_S=480  # leaves the 10-minute budget room for start-up and the report

make_gpu_venv() {  # the README's commands; one-off, and longer when Transformer Engine compiles
  python3.11 -m venv .venv-gpu
  .venv-gpu/bin/pip install -U pip setuptools wheel cmake ninja pybind11
  .venv-gpu/bin/pip install -c constraints-gpu.txt torch torchvision torchaudio
  .venv-gpu/bin/pip install -c constraints-gpu.txt --no-build-isolation -e ".[gpu,dev]"
}

if [[ -n "${SUPERRL_PYTHON:-}" ]]; then
  PYTHON=$SUPERRL_PYTHON
else
  [[ -x .venv-gpu/bin/python ]] || make_gpu_venv
  PYTHON=.venv-gpu/bin/python
fi

"$PYTHON" -c "import torch, sys
if not torch.cuda.is_available():
    sys.exit('gpu_smoke: torch.cuda.is_available() is False: no GPU visible to ' + sys.executable)
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}:', ', '.join(
    torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"

mkdir -p "$OUT"
status=0
timeout "$TEST_TIMEOUT_S" "$PYTHON" -m pytest tests/gpu -v -rA -p no:cacheprovider --basetemp "$OUT/pytest" \
  --junitxml "$OUT/junit.xml" > "$OUT/pytest.log" 2>&1 || status=$?
tail -n 25 "$OUT/pytest.log"
"$PYTHON" bench/gpu_smoke_report.py --out-dir "$OUT" --pytest-status "$status"
