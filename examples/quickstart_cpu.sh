#!/usr/bin/env bash
# CPU quickstart (2 cores, ~10-15 minutes): a tiny Llama-style model made locally, a brief SFT warm
# start on easy problems (1-step sums), then SuperRL on harder ones (2-step sums and differences,
# where most sampled answers are wrong: sparse rewards) with TP2 on 2 CPU processes, then curves.
# Everything lands in runs/quickstart/. Run from anywhere: bash examples/quickstart_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/quickstart
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. Model and data, made locally (no hub access).
[ -f $OUT/model/config.json ] || python tools/make_tiny_model.py --arch llama --out-dir $OUT/model \
    --hidden 128 --layers 2 --heads 4 --kv-heads 2 --vocab 512 --seed 0
make_data() {  # name level n seed [--exclude FILE]
  [ -f $OUT/data/$1.jsonl ] || python tools/make_arith_dataset.py --level "$2" --digits 1 --n "$3" \
      --seed "$4" --out $OUT/data/$1.jsonl "${@:5}"
}
mkdir -p $OUT/data
make_data l1_train 1 3000 0
make_data l1_eval 1 50 1 --exclude $OUT/data/l1_train.jsonl
make_data l2_train 2 3000 0
make_data l2_eval 2 100 1 --exclude $OUT/data/l2_train.jsonl

rm -rf $OUT/sft $OUT/superrl  # a re-run starts both phases afresh

# 2. Brief SFT warm start (one process): the trainer with every prompt routed to the expert answer.
python -m superrl.train --config examples/quickstart/sft_warmup.yaml

# 3. SuperRL: per-prompt Adaptive Switch + Hybrid Actor, tensor-parallel over 2 processes.
torchrun --standalone --nproc-per-node 2 -m superrl.train --config examples/quickstart/superrl.yaml

# 4. Curves and a summary of the switch and reward trends.
python -m superrl.plot $OUT/superrl
