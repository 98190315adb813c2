"""Training checkpoints: `run_dir/checkpoints/step_N/`, written atomically, last N kept.

A step_N directory is a SuperRL megatron checkpoint (superrl/weights/megatron_checkpoint.py), so
`model.megatron_dir`, `tools/convert_megatron_to_hf.py` and `tools/compare_logits.py` read it as
they read a converted model; its distributed checkpoint also holds the optimizer and scheduler:

    step_N/dist_ckpt/              model + optimizer + scheduler, reshardable to any TP x PP x DP
    step_N/hf/                     config and tokenizer files
    step_N/trainer/rank_XXXXX.pt   RNG states, data-loader position, switch state, and each
                                   optional feature's state (feature.py), e.g. the log-sigma weights
    step_N/critic/                 with algorithm.advantage=gae: the critic's model + optimizer +
                                   scheduler, laid out as step_N itself (dist_ckpt/ and its own
                                   superrl_checkpoint.json), written before step_N's metadata
    step_N/superrl_checkpoint.json written last: its presence means the checkpoint is complete

Everything is written under `.tmp_step_N` and renamed by rank 0 after a barrier, so a crash mid-
write never leaves a directory that looks complete; a failed write (disk full) removes its partial
directory and names the last complete checkpoint. Before loading, a checkpoint is validated (same
model, a training checkpoint, same world size, every file's size and CRC-32 as written); resuming
"latest" skips invalid checkpoints, newest first, and says why. No file is loaded in a way that
could run code (superrl/weights/safe_unpickle.py).
"""
import os
import random
import shutil

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import tensor_parallel
from torch.distributed.checkpoint.api import CheckpointException

from superrl.weights.checkpoint_manifest import CheckpointError
from superrl.weights.safe_unpickle import load_plain_data
from superrl.weights.megatron_checkpoint import (HF_FILES_DIR, METADATA_FILE, check_same_model, copy_hf_files,
                                                 load_dist_checkpoint, read_checkpoint_metadata,
                                                 restore_model_tensors, save_sharded_state,
                                                 verify_checkpoint_files)

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}  # others fail on CPU/gloo
CRITIC_DIR = "critic"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp_" + STEP_PREFIX


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def step_dir(run_dir: str, step: int) -> str:
    return os.path.join(checkpoint_root(run_dir), f"{STEP_PREFIX}{step}")


def complete_checkpoints(run_dir: str) -> list:
    """Complete checkpoint directories, oldest first."""
    root = checkpoint_root(run_dir)
    if not os.path.isdir(root):
        return []
    steps = sorted(int(d[len(STEP_PREFIX):]) for d in os.listdir(root)
                   if d.startswith(STEP_PREFIX) and d[len(STEP_PREFIX):].isdigit()
                   and os.path.isfile(os.path.join(root, d, METADATA_FILE)))
    return [step_dir(run_dir, s) for s in steps]


def _sharded_state(state, is_loading: bool) -> dict:
    """Model tensors at the top level (as in a model-only checkpoint) plus optimizer and scheduler."""
    model_sd = state.model.module.sharded_state_dict()
    # also when saving: an optimizer that has not stepped yet (the policy's during critic.warmup_steps)
    # has no Adam state either, and the zeros are what torch's Adam starts from on its first step
    _init_adam_step_state(state.optimizer)
    return {**model_sd,
            "optimizer": state.optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                            metadata=OPTIM_METADATA),
            "scheduler": state.scheduler.state_dict()}


def _init_adam_step_state(optimizer) -> None:
    """A fresh torch Adam has no `step` state, which the sharded saver and loader expect (no Apex/TE)."""
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


def save_checkpoint(run_dir: str, step: int, state, trainer_state: dict, metadata: dict, hf_dir: str,
                    keep_last: int, critic_state=None) -> str:
    """Collective. `metadata`: checkpoint_metadata(...) of the model plus run facts to check on resume;
    `critic_state`: the critic's TrainState, saved beside the policy's (trainer/critic.py)."""
    root = checkpoint_root(run_dir)
    final = step_dir(run_dir, step)
    tmp = os.path.join(root, f"{TMP_PREFIX}{step}")
    rank = dist.get_rank()
    try:
        if rank == 0:
            _remove_partial_checkpoints(root)
            os.makedirs(os.path.join(tmp, "trainer"))
            copy_hf_files(hf_dir, os.path.join(tmp, HF_FILES_DIR))
        dist.barrier()
        torch.save({**trainer_state, "rng": rng_state()}, os.path.join(tmp, "trainer", f"rank_{rank:05d}.pt"))
        if critic_state is not None:  # before the policy's: its files go into the step's manifest
            save_sharded_state(_sharded_state(critic_state, is_loading=False), os.path.join(tmp, CRITIC_DIR),
                               {**metadata, "step": step, "critic": True})
        save_sharded_state(_sharded_state(state, is_loading=False), tmp,
                           {**metadata, "step": step, "world_size": dist.get_world_size()})
    except (OSError, RuntimeError, CheckpointException) as e:  # the last two wrap writers' OSErrors
        usage = shutil.disk_usage(root)  # before removing the partial write: a full disk shows as full
        shutil.rmtree(tmp, ignore_errors=True)
        previous = complete_checkpoints(run_dir)
        raise CheckpointError(f"writing checkpoint {final!r} failed with {usage.free / 2**20:.1f} MiB of "
                              f"{usage.total / 2**20:.1f} MiB free on its filesystem ({type(e).__name__}: {e}); "
                              f"removed the partial {tmp!r}; last complete checkpoint: "
                              f"{previous[-1] if previous else 'none'}") from e
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _remove_partial_checkpoints(root: str) -> None:
    """Left by a crash or kill during a save; never complete, never loaded, only taking space."""
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if name.startswith(TMP_PREFIX):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def validate_checkpoint(path: str, arch, padded_vocab: int, check_world_size: bool = True) -> dict:
    """Collective. The checkpoint's metadata, or CheckpointError naming the file and the mismatch.
    The world size matters only when restoring per-rank trainer state (not for evaluation)."""
    meta = read_checkpoint_metadata(path)
    check_same_model(meta, arch, padded_vocab, path)
    if "step" not in meta:
        raise CheckpointError(f"{path} is a model checkpoint, not a training checkpoint (no step, no "
                              "optimizer): start from it with model.megatron_dir instead")
    if check_world_size and meta["world_size"] != dist.get_world_size():
        raise CheckpointError(f"{path}: saved with world size {meta['world_size']}, this run has "
                              f"{dist.get_world_size()}; per-rank RNG and data state cannot be restored")
    verify_checkpoint_files(path, meta)
    return meta


def latest_valid_checkpoint(run_dir: str, arch, padded_vocab: int):
    """Collective. (path, metadata, reasons newer ones were skipped) of the newest checkpoint that
    validates; (None, None, []) when the run has none; CheckpointError when none validates."""
    skipped = []
    for path in reversed(complete_checkpoints(run_dir)):
        try:
            return path, validate_checkpoint(path, arch, padded_vocab), skipped
        except CheckpointError as e:
            skipped.append(str(e))
    if skipped:
        raise CheckpointError("no loadable checkpoint to resume from: " + " | ".join(skipped))
    return None, None, skipped


def load_checkpoint(path: str, state, arch, load_trainer_state: bool = True, meta=None,
                    critic_state=None) -> tuple:
    """Load model/optimizer/scheduler (resharded to this run's TP x PP), and the critic's into
    `critic_state` when given; return (meta, trainer_state). Without the trainer state
    (evaluation), any world size may load it. `meta`: what `validate_checkpoint` just returned for
    `path`, so its files are not checksummed twice."""
    if meta is None:
        meta = validate_checkpoint(path, arch, state.padded_vocab, check_world_size=load_trainer_state)
    _load_train_state(state, path)
    if critic_state is not None:
        critic_dir = os.path.join(path, CRITIC_DIR)
        if not os.path.isdir(critic_dir):
            raise CheckpointError(f"{path} holds no critic ({critic_dir} is missing): it was saved by a run "
                                  "without algorithm.advantage=gae, which this run cannot resume")
        _load_train_state(critic_state, critic_dir)
    if not load_trainer_state:
        return meta, None
    trainer_state = load_plain_data(os.path.join(path, "trainer", f"rank_{dist.get_rank():05d}.pt"))
    set_rng_state(trainer_state.pop("rng"))
    return meta, trainer_state


def _load_train_state(state, directory: str) -> None:
    """Collective: one TrainState's model, optimizer and scheduler from `directory`'s dist_ckpt/."""
    loaded = load_dist_checkpoint(_sharded_state(state, is_loading=True), directory)
    restore_model_tensors(state.model, loaded)
    state.optimizer.load_state_dict(loaded["optimizer"])
    state.scheduler.load_state_dict(loaded["scheduler"])
