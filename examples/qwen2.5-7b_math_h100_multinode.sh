#!/usr/bin/env bash
# Qwen2.5-7B + SuperRL (windowed switch) on MATH, 2+ nodes of 8 H100, TP4 x PP2.
# On every node (paths on a shared filesystem):
#   NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0> HF_DIR=/shared/Qwen2.5-7B \
#   MATH_TRAIN=/shared/math/train.jsonl MATH_TEST=/shared/math/test.jsonl \
#     bash examples/qwen2.5-7b_math_h100_multinode.sh [dotted.key=value ...]
# MATH rows in the original schema: problem, solution with \boxed{} (level, type optional).
set -euo pipefail
exec bash "$(dirname "$0")/qwen2.5-7b_h100_multinode_launch.sh" examples/qwen2.5-7b_math_h100_multinode.yaml \
  "${MATH_TRAIN:-data/math/train.jsonl}" "${MATH_TEST:-data/math/test.jsonl}" "$@"
