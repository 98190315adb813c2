"""Worker (one world of 4 ranks): each `--model NAME=DIR` converted HF -> megatron at TP1, TP2,
PP2 and TP2xPP2, and each checkpoint's logits at its own layout; rank 0 reports max |megatron - HF|
per case. Layouts switch inside the world as in convert_layouts.py (spare ranks: DP replicas)."""
import argparse
import os
import sys

from convert_layouts import CONVERT_LAYOUTS, logits_at, use_layout
from dist_harness import REPO_ROOT, write_result

sys.path.insert(0, str(REPO_ROOT / "tools"))

from compare_logits import hf_logits, random_tokens  # noqa: E402
from convert_hf_to_megatron import check_layout, convert  # noqa: E402
from superrl.distributed import init_distributed  # noqa: E402
from superrl.hf_config import load_arch  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", action="append", required=True, help="NAME=HF_DIR")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--work-dir", required=True)
    args = p.parse_args()
    ctx = init_distributed(1, 1, seed=0)
    diffs = {}
    for name, hf_dir in (spec.split("=", 1) for spec in args.model):
        arch = load_arch(hf_dir)
        tokens = random_tokens(arch.vocab_size, 2, args.seq_len, seed=0)
        reference = hf_logits(hf_dir, tokens) if ctx.rank == 0 else None
        for layout in CONVERT_LAYOUTS:
            ckpt = os.path.join(args.work_dir, f"{name}_tp{layout[0]}pp{layout[1]}")
            use_layout(*layout)
            convert(hf_dir, ckpt, arch, check_layout(arch, *layout, 4))
            logits = logits_at(layout, ckpt, arch, tokens)
            if ctx.rank == 0:
                diffs[f"{name}@tp{layout[0]}pp{layout[1]}"] = (logits - reference).abs().max().item()
    write_result({"hf_diff": diffs})


if __name__ == "__main__":
    main()
