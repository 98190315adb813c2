"""Worker: weight sync between a trainer and an engine of other precisions, through each transport.

For each (model.dtype, engine dtype, transport): perturb the trainer's weights, sync, and record on
the engine's rank which engine tensors equal the trainer's full HF tensor cast once to the
engine's dtype (bit for bit), and the engine's dtypes.
"""
import argparse

import torch
import torch.distributed as dist

from dist_harness import write_result
from superrl.config import load_config
from superrl.distributed import init_distributed
from superrl.hf_config import load_arch
from superrl.rollout import EmbeddedEngine
from superrl.sync import WeightSync
from superrl.trainer.model_setup import build_train_state
from superrl.weights.load import export_hf_weights

CASES = [(model, engine, transport) for model, engine in (("float32", "bfloat16"), ("bfloat16", "float32"),
                                                          ("bfloat16", "bfloat16"))
         for transport in ("direct", "shared_memory", "collective")]


def synced_exactly(hf_dir: str, arch, tp: int, model_dtype: str, engine_dtype: str, transport: str) -> dict:
    config = load_config(None, [f"model.hf_dir={hf_dir}", f"parallel.tp={tp}", f"model.dtype={model_dtype}"])
    state = build_train_state(config, arch)
    generator = torch.Generator().manual_seed(dist.get_rank())
    with torch.no_grad():
        for p in state.model.parameters():  # weights the engine does not have yet
            p.add_(0.01 * torch.randn(p.shape, generator=generator).to(p.dtype))
    engine = EmbeddedEngine(hf_dir, dtype=engine_dtype) if dist.get_rank() == 0 else None
    WeightSync(state.model, arch, engine, transport=transport).sync()
    full = dict(export_hf_weights(state.model, arch))  # collective over TP
    if engine is None:
        return {}
    target = getattr(torch, engine_dtype)
    got = engine.state_dict()
    return {"exact": [name for name, tensor in full.items() if name in got and torch.equal(got[name], tensor.to(target))],
            "engine_tensors": sorted(got), "engine_dtypes": sorted({str(t.dtype) for t in got.values()})}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    args = p.parse_args()
    arch = load_arch(args.hf_dir)
    init_distributed(2, 1, seed=0)
    write_result({"/".join(case): synced_exactly(args.hf_dir, arch, 2, *case) for case in CASES})


if __name__ == "__main__":
    main()
