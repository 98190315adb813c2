#!/usr/bin/env bash
# Qwen2.5-7B + SuperRL (per-prompt switch, hard gate) on GSM8K, 2+ nodes of 8 H100, TP4 x PP2.
# On every node (paths on a shared filesystem):
#   NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0> HF_DIR=/shared/Qwen2.5-7B \
#   GSM8K_TRAIN=/shared/gsm8k/train.jsonl GSM8K_TEST=/shared/gsm8k/test.jsonl \
#     bash examples/qwen2.5-7b_gsm8k_h100_multinode.sh [dotted.key=value ...]
# GSM8K rows in the original schema: question, answer ending in "#### N".
set -euo pipefail
exec bash "$(dirname "$0")/qwen2.5-7b_h100_multinode_launch.sh" examples/qwen2.5-7b_gsm8k_h100_multinode.yaml \
  "${GSM8K_TRAIN:-data/gsm8k/train.jsonl}" "${GSM8K_TEST:-data/gsm8k/test.jsonl}" "$@"
