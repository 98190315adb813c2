#!/usr/bin/env bash
# One arm of the sample-efficiency benchmark by hand, with the benchmark's settings. The whole
# benchmark (8 arms x 3 seeds, table, plot and JSON in docs/results/) is
#   python bench/sample_efficiency.py
# This script: bash examples/sample_efficiency/run_arm.sh ARM [SEED]
# where ARM names one of the configs
#   examples/sample_efficiency/grpo.yaml        examples/sample_efficiency/sft_only.yaml
#   examples/sample_efficiency/probe.yaml       examples/sample_efficiency/per_prompt.yaml
#   examples/sample_efficiency/adv_gate.yaml    examples/sample_efficiency/window.yaml
#   examples/sample_efficiency/log_sigma.yaml
# (the bench's sft_then_grpo arm is sft_only for half the steps, then grpo from that checkpoint).
# The data and the shared SFT warm start (examples/sample_efficiency/warmup.yaml) are made by the
# bench's --prepare-only.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARM=${1:?usage: bash examples/sample_efficiency/run_arm.sh ARM [SEED]}
SEED=${2:-0}
OUT=runs/sample_efficiency
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

[ -f $OUT/model/config.json ] || python tools/make_tiny_model.py --arch llama --out-dir $OUT/model \
    --hidden 128 --layers 2 --heads 4 --kv-heads 2 --vocab 512 --seed 0
python bench/sample_efficiency.py --prepare-only  # data + warm start, kept when already there
python -m superrl.train --config examples/sample_efficiency/$ARM.yaml trainer.seed=$SEED \
    trainer.run_dir=$OUT/by_hand/seed$SEED/$ARM
python -m superrl.plot $OUT/by_hand/seed$SEED/$ARM
