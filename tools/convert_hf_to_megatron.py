"""Convert a Hugging Face Llama / Qwen2 / Qwen3 model into a megatron-core distributed checkpoint.

    python tools/convert_hf_to_megatron.py --hf-dir DIR --out-dir MDIR --tp N --pp M

The checkpoint is written *at* TP N x PP M (its metadata records the layout). Run as one command,
the tool launches N*M local gloo ranks under torchrun itself; under `torchrun` with a world size
divisible by N*M it uses that world. Each rank builds its own stage, reads only the HF tensors it
needs (lazily, one at a time) and saves its shard, so no process ever holds the whole model.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist
from megatron.core import parallel_state as mpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from superrl.config import Config, ConfigError, ParallelConfig, validate_parallelism  # noqa: E402
from superrl.distributed import destroy_distributed, init_distributed  # noqa: E402
from superrl.hf_config import ModelArch, UnsupportedModelError, load_arch  # noqa: E402
from superrl.models.gpt import build_policy_model  # noqa: E402
from superrl.weights.checkpoint_manifest import CheckpointError  # noqa: E402
from superrl.weights.hf_safetensors import HFCheckpointReader, check_hf_checkpoint  # noqa: E402
from superrl.weights.load import load_hf_weights  # noqa: E402
from superrl.weights.megatron_checkpoint import (HF_FILES_DIR, checkpoint_metadata, copy_hf_files,  # noqa: E402
                                                 save_model_checkpoint)

USER_ERRORS = (ConfigError, UnsupportedModelError, CheckpointError, FileNotFoundError)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    return p.parse_args(argv)


def in_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_layout(arch: ModelArch, tp: int, pp: int, world: int) -> int:
    """Named errors when TP/PP do not fit the model or the world; returns the padded vocab size."""
    config = Config(parallel=ParallelConfig(tp=tp, pp=pp))
    validate_parallelism(config, arch, world)
    return arch.padded_vocab_size(config.model.vocab_pad_multiple)


def run_under_torchrun(nproc: int, script: str, argv: list) -> int:
    """Re-run `script argv` as `nproc` local ranks (gloo on CPU); returns torchrun's exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           script, *argv]
    return subprocess.run(cmd).returncode


def convert(hf_dir: str, out_dir: str, arch: ModelArch, padded_vocab: int) -> None:
    """Collective over the current megatron TP x PP layout: build this rank's stage, fill it from the
    HF files, save its shard."""
    tp, pp = mpu.get_tensor_model_parallel_world_size(), mpu.get_pipeline_model_parallel_world_size()
    model = build_policy_model(arch, tp, pp, padded_vocab)
    load_hf_weights(model, hf_dir, arch, padded_vocab)
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_config = json.load(f)
    hf_dtype = str(HFCheckpointReader(hf_dir)("model.embed_tokens.weight").dtype).removeprefix("torch.")
    metadata = checkpoint_metadata(arch, hf_config, tp, pp, padded_vocab, hf_dtype=hf_dtype,
                                   source=os.path.abspath(hf_dir))
    save_model_checkpoint(model, out_dir, metadata)
    if dist.get_rank() == 0:
        copy_hf_files(hf_dir, os.path.join(out_dir, HF_FILES_DIR))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    arch = load_arch(args.hf_dir)
    nproc = args.tp * args.pp
    padded_vocab = check_layout(arch, args.tp, args.pp, world_size() if in_torchrun() else nproc)
    check_hf_checkpoint(HFCheckpointReader(args.hf_dir), arch)
    if nproc > 1 and not in_torchrun():
        return run_under_torchrun(nproc, __file__, argv)
    ctx = init_distributed(args.tp, args.pp, seed=0)
    convert(args.hf_dir, args.out_dir, arch, padded_vocab)
    if ctx.rank == 0:
        print(f"wrote TP{args.tp} x PP{args.pp} megatron checkpoint of {arch.name} to {args.out_dir}")
    destroy_distributed()
    return 0


def exit_on_user_error(main_fn) -> None:
    """CLI entry: bad input ends with its message (no traceback) and exit code 1."""
    try:
        sys.exit(main_fn())
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    exit_on_user_error(main)
