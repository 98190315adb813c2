"""Training checkpoints: `run_dir/checkpoints/step_N/`, written atomically, last N kept.

    step_N/model_optim/   megatron distributed checkpoint (model + optimizer + scheduler), reshardable
    step_N/trainer/       rank_XXXXX.pt: RNG states, data-loader position, switch state, log-sigma
    step_N/meta.json      step, layout, model signature; written last, so its presence = complete

Everything is written under `.tmp_step_N` and renamed by rank 0 after a barrier, so a crash mid-
write never leaves a directory that looks complete. Loading uses `weights_only=True`: no pickle.
"""
import json
import os
import random
import shutil

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state as mpu, tensor_parallel

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}  # others fail on CPU/gloo
STEP_PREFIX = "step_"


class CheckpointMismatchError(ValueError):
    pass


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def complete_checkpoints(run_dir: str) -> list:
    """Complete checkpoint directories, oldest first."""
    root = checkpoint_root(run_dir)
    if not os.path.isdir(root):
        return []
    steps = sorted(int(d[len(STEP_PREFIX):]) for d in os.listdir(root)
                   if d.startswith(STEP_PREFIX) and d[len(STEP_PREFIX):].isdigit()
                   and os.path.isfile(os.path.join(root, d, "meta.json")))
    return [os.path.join(root, f"{STEP_PREFIX}{s}") for s in steps]


def _sharded_state(state, is_loading: bool) -> dict:
    model_sd = state.model.module.sharded_state_dict()
    if is_loading:
        _init_adam_step_state(state.optimizer)
    return {"model": model_sd,
            "optimizer": state.optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                            metadata=OPTIM_METADATA),
            "scheduler": state.scheduler.state_dict()}


def _init_adam_step_state(optimizer) -> None:
    """A fresh torch Adam has no `step` state, which the sharded loader expects (no Apex/TE)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_pos": random.getstate()[2], "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def save_checkpoint(run_dir: str, step: int, state, trainer_state: dict, meta: dict, keep_last: int) -> str:
    root = checkpoint_root(run_dir)
    final = os.path.join(root, f"{STEP_PREFIX}{step}")
    tmp = os.path.join(root, f".tmp_{STEP_PREFIX}{step}")
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "model_optim"))
        os.makedirs(os.path.join(tmp, "trainer"))
    dist.barrier()
    dist_checkpointing.save(_sharded_state(state, is_loading=False), os.path.join(tmp, "model_optim"))
    torch.save({**trainer_state, "rng": rng_state()}, os.path.join(tmp, "trainer", f"rank_{rank:05d}.pt"))
    dist.barrier()
    if rank == 0:
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"step": step, "world_size": dist.get_world_size(), **meta}, f, indent=2)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def read_meta(path: str) -> dict:
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise CheckpointMismatchError(f"{path}: no meta.json, the checkpoint is incomplete")
    with open(meta_path) as f:
        return json.load(f)


def check_meta(path: str, meta: dict, expected: dict) -> None:
    for key, value in expected.items():
        if meta.get(key) != value:
            raise CheckpointMismatchError(f"{path}/meta.json: {key} is {meta.get(key)!r}, "
                                          f"this run has {value!r}")


def load_checkpoint(path: str, state, expected_meta: dict, load_trainer_state: bool = True) -> tuple:
    """Load model/optimizer/scheduler (resharded to this run's TP x PP); return (meta, trainer_state)."""
    meta = read_meta(path)
    check_meta(path, meta, expected_meta)
    loaded = dist_checkpointing.load(_sharded_state(state, is_loading=True), os.path.join(path, "model_optim"))
    state.model.module.load_state_dict(loaded["model"])
    state.optimizer.load_state_dict(loaded["optimizer"])
    state.scheduler.load_state_dict(loaded["scheduler"])
    if not load_trainer_state:
        return meta, None
    if meta["world_size"] != dist.get_world_size():
        raise CheckpointMismatchError(f"{path}: saved with world size {meta['world_size']}, this run has "
                                      f"{dist.get_world_size()}; per-rank RNG and data state cannot be restored")
    trainer_state = torch.load(os.path.join(path, "trainer", f"rank_{dist.get_rank():05d}.pt"),
                               weights_only=True)
    set_rng_state(trainer_state.pop("rng"))
    return meta, trainer_state
