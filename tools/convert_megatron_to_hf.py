"""Convert a megatron-core distributed checkpoint (from convert_hf_to_megatron.py or training) back
into a Hugging Face model folder.

    python tools/convert_megatron_to_hf.py --megatron-dir MDIR --out-dir DIR [--max-shard-mb 2048]

Architecture, TP/PP and the source dtype come from the checkpoint's own metadata. One process loads
it at TP1 x PP1 (dist_checkpointing reshards whatever layout it was saved at), exports through the
shared HF<->megatron mapping and writes safetensors shards (+ index when there are several) next
to the source model's config and tokenizer files.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from convert_hf_to_megatron import exit_on_user_error  # noqa: E402
from superrl.distributed import destroy_distributed, init_distributed  # noqa: E402
from superrl.models.gpt import build_policy_model  # noqa: E402
from superrl.weights.hf_safetensors import write_sharded  # noqa: E402
from superrl.weights.load import export_hf_weights  # noqa: E402
from superrl.weights.megatron_checkpoint import (HF_FILES_DIR, checkpoint_arch, copy_hf_files,  # noqa: E402
                                                 load_model_checkpoint, read_checkpoint_metadata)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--megatron-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--max-shard-mb", type=float, default=2048, help="largest safetensors file to write")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    metadata = read_checkpoint_metadata(args.megatron_dir)
    arch = checkpoint_arch(metadata)
    init_distributed(1, 1, seed=0)
    model = build_policy_model(arch, 1, 1, metadata["padded_vocab"])
    load_model_checkpoint(model, args.megatron_dir, arch)
    dtype = getattr(torch, metadata["hf_dtype"])
    with torch.no_grad():
        tensors = ((name, t.to(dtype)) for name, t in export_hf_weights(model, arch))
        files = write_sharded(tensors, args.out_dir, max_shard_bytes=int(args.max_shard_mb * 2**20))
    copy_hf_files(os.path.join(args.megatron_dir, HF_FILES_DIR), args.out_dir)
    print(f"wrote {arch.name} ({len(files)} safetensors file(s)) from the TP{metadata['tp']} x "
          f"PP{metadata['pp']} checkpoint to {args.out_dir}")
    destroy_distributed()
    return 0


if __name__ == "__main__":
    exit_on_user_error(main)
