"""Worker (one world of 4 ranks): HF -> megatron conversions at several TP x PP layouts, then each
checkpoint's logits at its own and at resharded layouts. Layouts switch by re-initialising megatron's
model-parallel groups inside the world (spare ranks become data-parallel replicas), which saves a
torchrun launch per case. Rank 0 reports max |diff| per case.
"""
import argparse
import os
import sys

from megatron.core import parallel_state as mpu

from dist_harness import REPO_ROOT, write_result

sys.path.insert(0, str(REPO_ROOT / "tools"))

from compare_logits import checkpoint_logits, hf_logits, random_tokens  # noqa: E402
from convert_hf_to_megatron import check_layout, convert  # noqa: E402
from superrl.distributed import init_distributed, seed_everything  # noqa: E402
from superrl.hf_config import load_arch  # noqa: E402
from superrl.models.gpt import build_policy_model  # noqa: E402
from superrl.weights.checkpoint_manifest import CheckpointError  # noqa: E402
from superrl.weights.megatron_checkpoint import load_model_checkpoint  # noqa: E402

CONVERT_LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]
# (converted at, loaded at): own layouts, and TP2xPP1 <-> TP1xPP2 resharding
LLAMA_LOADS = [((1, 1), (1, 1)), ((2, 1), (2, 1)), ((2, 1), (1, 2)), ((1, 2), (1, 2)), ((1, 2), (2, 1)),
               ((2, 2), (2, 2))]
QWEN_LOADS = [(2, 2), (1, 1)]  # the TP2xPP2 checkpoint written by the CLI


def use_layout(tp: int, pp: int) -> None:
    mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    seed_everything(0)


def ckpt_name(layout) -> str:
    return f"llama_tp{layout[0]}pp{layout[1]}"


def case_name(saved, loaded) -> str:
    return f"{ckpt_name(saved)}@tp{loaded[0]}pp{loaded[1]}"


def logits_at(layout, ckpt_dir, arch, tokens):
    use_layout(*layout)
    return checkpoint_logits(ckpt_dir, arch, check_layout(arch, *layout, 4), tokens)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--llama", required=True)
    p.add_argument("--llama-perturbed", required=True)
    p.add_argument("--qwen", required=True)
    p.add_argument("--qwen-ckpt", required=True)
    p.add_argument("--work-dir", required=True)
    args = p.parse_args()
    ctx = init_distributed(1, 1, seed=0)
    llama, qwen = load_arch(args.llama), load_arch(args.qwen)
    tokens = random_tokens(llama.vocab_size, 2, 16, seed=0)
    rank0 = ctx.rank == 0

    for layout in CONVERT_LAYOUTS:
        use_layout(*layout)
        convert(args.llama, os.path.join(args.work_dir, ckpt_name(layout)), llama, check_layout(llama, *layout, 4))

    logits = {case_name(s, l): logits_at(l, os.path.join(args.work_dir, ckpt_name(s)), llama, tokens)
              for s, l in LLAMA_LOADS}
    qwen_logits = {f"qwen_tp2pp2@tp{l[0]}pp{l[1]}": logits_at(l, args.qwen_ckpt, qwen, tokens) for l in QWEN_LOADS}

    result = {}
    if rank0:
        reference = hf_logits(args.llama, tokens)
        qwen_reference = hf_logits(args.qwen, tokens)
        result["hf_diff"] = {**{k: (v - reference).abs().max().item() for k, v in logits.items()},
                             **{k: (v - qwen_reference).abs().max().item() for k, v in qwen_logits.items()}}
        result["reshard_diff"] = {
            f"{ckpt_name(s)}@tp{s[1]}pp{s[0]}": (logits[case_name(s, s)] - logits[case_name(s, s[::-1])]).abs().max().item()
            for s in [(2, 1), (1, 2)]}
        result["perturbed_diff"] = (logits[case_name((1, 1), (1, 1))]
                                    - hf_logits(args.llama_perturbed, tokens)).abs().max().item()

    use_layout(1, 1)  # a Qwen2 model cannot take a Llama checkpoint: the error names the differences
    try:
        load_model_checkpoint(build_policy_model(qwen, 1, 1, qwen.padded_vocab_size(128)),
                              os.path.join(args.work_dir, ckpt_name((2, 2))), qwen)
        result["other_model_error"] = None
    except CheckpointError as e:
        result["other_model_error"] = str(e)
    write_result(result)


if __name__ == "__main__":
    main()
