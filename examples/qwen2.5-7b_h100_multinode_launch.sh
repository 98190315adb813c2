#!/usr/bin/env bash
# Shared launcher of the Qwen2.5-7B multi-node H100 recipes; run one of them instead:
#   examples/qwen2.5-7b_gsm8k_h100_multinode.sh, examples/qwen2.5-7b_math_h100_multinode.sh
#
#   qwen2.5-7b_h100_multinode_launch.sh CONFIG.yaml TRAIN.jsonl EVAL.jsonl [dotted.key=value ...]
#
# Every node runs the same command. Env: NODE_RANK and MASTER_ADDR (required), NNODES (2),
# MASTER_PORT (29500), HF_DIR (a local copy of Qwen/Qwen2.5-7B), MEGATRON_DIR (its TP4 x PP2
# conversion), CONVERT_TIMEOUT_S (3600: how long the other nodes wait for node 0's conversion).
# HF_DIR, MEGATRON_DIR, the data and trainer.run_dir must be on a filesystem every node sees:
# node 0 converts, the others wait for its result, or for its failure marker.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=$1 TRAIN=$2 EVAL=$3
shift 3
NODE_RANK=${NODE_RANK:?set NODE_RANK to this node\'s index, 0..NNODES-1}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to node 0\'s address}
NNODES=${NNODES:-2}
MASTER_PORT=${MASTER_PORT:-29500}
HF_DIR=${HF_DIR:-models/Qwen2.5-7B}
MEGATRON_DIR=${MEGATRON_DIR:-${HF_DIR}_megatron_tp4pp2}
CONVERT_TIMEOUT_S=${CONVERT_TIMEOUT_S:-3600}

for file in "$HF_DIR/config.json" "$TRAIN" "$EVAL"; do
  [ -f "$file" ] || { echo "error: $file does not exist; set HF_DIR and the data paths (see the recipe's header)" >&2; exit 1; }
done

# TP4 x PP2 (as in the YAML): 28 query / 4 KV heads split over 4 GPUs, 28 layers over 2 stages.
# Written to a temporary folder and renamed, so waiting nodes never see a half-written checkpoint.
if [ ! -f "$MEGATRON_DIR/superrl_checkpoint.json" ]; then
  if [ "$NODE_RANK" = 0 ]; then
    rm -rf "$MEGATRON_DIR.tmp" "$MEGATRON_DIR.failed"
    # A failed conversion or check leaves a marker, so the waiting nodes stop at once, not at time-out.
    trap 'echo "node 0: conversion of $HF_DIR failed (exit $?)" > "$MEGATRON_DIR.failed"' ERR
    python tools/convert_hf_to_megatron.py --hf-dir "$HF_DIR" --out-dir "$MEGATRON_DIR.tmp" --tp 4 --pp 2
    # fp32 accumulation-order noise grows with depth and logit size; a mapping bug is >> 1e-2.
    python tools/compare_logits.py --hf-dir "$HF_DIR" --megatron-dir "$MEGATRON_DIR.tmp" --atol 1e-3
    mv "$MEGATRON_DIR.tmp" "$MEGATRON_DIR"
    trap - ERR
  else
    echo "waiting up to ${CONVERT_TIMEOUT_S}s for node 0 to write $MEGATRON_DIR ..."
    deadline=$(( SECONDS + CONVERT_TIMEOUT_S ))
    until [ -f "$MEGATRON_DIR/superrl_checkpoint.json" ]; do
      if [ -f "$MEGATRON_DIR.failed" ]; then
        echo "error: $(cat "$MEGATRON_DIR.failed"); see node 0's log" >&2; exit 1
      fi
      if (( SECONDS >= deadline )); then
        echo "error: node 0 wrote no $MEGATRON_DIR within CONVERT_TIMEOUT_S=${CONVERT_TIMEOUT_S}s; check node 0's log (a stale $MEGATRON_DIR.tmp means it died mid-conversion)" >&2
        exit 1
      fi
      sleep 10
    done
  fi
fi

# DP = world / (TP x PP) = NNODES x 8 / 8 = NNODES; TP ranks stay inside a node, PP stages span nodes.
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node 8 \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$(basename "$CONFIG" .yaml)" \
  -m superrl.train --config "$CONFIG" model.hf_dir="$HF_DIR" model.megatron_dir="$MEGATRON_DIR" \
  data.train_files="$TRAIN" data.eval_files="$EVAL" "$@"
