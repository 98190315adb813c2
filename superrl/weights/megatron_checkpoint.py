"""Model weights as a megatron-core distributed checkpoint (torch_dist backend), plus our metadata.

A checkpoint directory holds:

    superrl_checkpoint.json  what was saved: the model signature (architecture + padded vocab), the
                             source HF config, the TP x PP it was written at, and caller extras
    hf/                      the source model's config, generation config and tokenizer files
    dist_ckpt/               megatron-core `dist_checkpointing` files

Global tensor shapes in `dist_ckpt/` do not depend on TP or PP (the padded vocab is TP-independent),
so any TP x PP layout loads the checkpoint: dist_checkpointing reads each rank's slices (resharding).
The metadata file is written last, so a checkpoint without it is incomplete. It also lists every
other file's size and CRC-32 (superrl/weights/checkpoint_manifest.py), checked before any load.
"""
import json
import os
import queue
import shutil

import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.validation import StrictHandling

from superrl.hf_config import ModelArch, arch_from_hf_config
from superrl.weights.checkpoint_manifest import CheckpointError, build_manifest, verify_manifest
from superrl.weights.safe_unpickle import check_pickled_files
from superrl.weights.load import unwrap_model

FORMAT = "superrl-megatron-v1"
METADATA_FILE = "superrl_checkpoint.json"
HF_FILES_DIR = "hf"
DIST_CKPT_DIR = "dist_ckpt"
# Weight files of an HF model folder; every other file (config, tokenizer, ...) travels with the model.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".index.json")


SIGNATURE_FIELDS = ("name", "family", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                    "ffn_hidden_size", "vocab_size", "rope_theta", "rms_norm_eps", "qkv_bias", "tied_embeddings",
                    "max_position_embeddings")


def model_signature(arch: ModelArch, padded_vocab: int) -> dict:
    """The tensors' shapes and what the weights were trained under: equal signatures <=> loadable
    weights. (Stop tokens and RoPE scaling stay out: checkpoints of earlier versions lack them.)"""
    return {**{k: getattr(arch, k) for k in SIGNATURE_FIELDS}, "padded_vocab": padded_vocab}


def checkpoint_metadata(arch: ModelArch, hf_config: dict, tp: int, pp: int, padded_vocab: int,
                        hf_dtype: str = "float32", **extra) -> dict:
    """`hf_dtype`: the source weights' dtype, which an HF export casts back to (the model is float32)."""
    return {"format": FORMAT, "model_signature": model_signature(arch, padded_vocab), "hf_config": hf_config,
            "tp": tp, "pp": pp, "padded_vocab": padded_vocab, "hf_dtype": hf_dtype, **extra}


def checkpoint_arch(metadata: dict) -> ModelArch:
    return arch_from_hf_config(metadata["hf_config"], f"{METADATA_FILE} hf_config")


def read_checkpoint_metadata(directory: str) -> dict:
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory!r} is not a complete SuperRL megatron checkpoint (no {METADATA_FILE})")
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}): the checkpoint is corrupted") from e
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise CheckpointError(f"{path}: format {found!r} is not {FORMAT!r}")
    return metadata


def verify_checkpoint_files(directory: str, metadata: dict) -> None:
    """Collective when distributed: every file the metadata lists is there, whole and unchanged, and
    the distributed checkpoint's pickled metadata holds only torch's own types."""
    if "files" not in metadata:
        raise CheckpointError(f"{os.path.join(directory, METADATA_FILE)} has no file manifest: written by "
                              "an older SuperRL; convert the model again")
    verify_manifest(directory, metadata["files"])
    check_pickled_files(os.path.join(directory, DIST_CKPT_DIR))


def check_same_model(metadata: dict, arch: ModelArch, padded_vocab: int, directory: str) -> None:
    """Name every field in which the checkpoint's model differs from `arch` (a clear error, not a
    shape mismatch deep inside dist_checkpointing)."""
    saved, here = metadata["model_signature"], model_signature(arch, padded_vocab)
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {here[k]!r} here" for k in here if saved.get(k) != here[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {directory!r} is from a different model ({'; '.join(diffs)})")


def copy_hf_files(src_dir: str, dst_dir: str) -> None:
    """Copy config and tokenizer files (everything but the weights) of an HF model folder."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in os.listdir(src_dir):
        path = os.path.join(src_dir, name)
        if os.path.isfile(path) and not name.startswith(".") and not name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(path, os.path.join(dst_dir, name))


def _use_in_process_writer_results_queue() -> None:
    # megatron's filesystem writer lazily starts a multiprocessing Manager (a server process) for
    # the queue its writer reports through, for async saves whose writer runs in another process.
    # Our saves are synchronous: the writer runs in this process (AsyncRequest.execute_sync), so a
    # plain queue carries the result, and no Manager exists to outlive a killed trainer.
    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def save_sharded_state(sharded_state_dict: dict, directory: str, metadata: dict) -> None:
    """Collective: write a sharded state dict (model, or model + optimizer) and the metadata."""
    dist_dir = os.path.join(directory, DIST_CKPT_DIR)
    if dist.get_rank() == 0:
        if os.path.exists(os.path.join(directory, METADATA_FILE)):
            os.remove(os.path.join(directory, METADATA_FILE))  # incomplete until rewritten below
        os.makedirs(dist_dir, exist_ok=True)
    dist.barrier()
    _use_in_process_writer_results_queue()
    dist_checkpointing.save(sharded_state_dict, dist_dir)  # synchronous: returns once written
    dist.barrier()  # every rank's files are complete before any rank hashes them
    manifest = build_manifest(directory, exclude=METADATA_FILE)
    if dist.get_rank() == 0:
        with open(os.path.join(directory, METADATA_FILE), "w") as f:
            json.dump({**metadata, "files": manifest}, f, indent=2)
    dist.barrier()


def save_model_checkpoint(model_chunk, directory: str, metadata: dict) -> None:
    """Collective over all ranks: each saves its TP x PP shard of the model weights."""
    save_sharded_state(unwrap_model(model_chunk).sharded_state_dict(), directory, metadata)


def load_model_checkpoint(model_chunk, directory: str, arch: ModelArch) -> dict:
    """Collective: fill this rank's shard of the model from a checkpoint saved at any TP x PP.

    Raises CheckpointError naming the differing fields when the checkpoint is from another model.
    Returns the checkpoint's metadata.
    """
    metadata = read_checkpoint_metadata(directory)
    model = unwrap_model(model_chunk)
    check_same_model(metadata, arch, model.vocab_size, directory)
    verify_checkpoint_files(directory, metadata)
    # A training checkpoint (superrl/trainer/checkpoint.py) also holds optimizer and scheduler
    # state, which a model-only load leaves on disk.
    state = load_dist_checkpoint(model.sharded_state_dict(), directory)
    restore_model_tensors(model, state)
    return metadata


TRAINING_STATE_KEYS = ("optimizer", "scheduler")
# Model state a checkpoint may lack: the FP8 output layer's scaling state is absent from a model
# converted from HF or trained with FP8 off, and then starts fresh (as on a first step). The other
# way round, a checkpoint's FP8 state is not requested by a model without FP8, and stays on disk.
# A policy checkpoint has no value head: a critic started from it keeps its own (models/value.py).
OPTIONAL_STATE_PREFIXES = ("fp8_output_layer.", "value_head.")


def load_dist_checkpoint(sharded_state_dict: dict, directory: str) -> dict:
    """Collective: load `directory`'s distributed checkpoint into `sharded_state_dict`'s layout.
    Every requested entry must be in the checkpoint, except optional state, left out of the result."""
    state, _on_disk_only, absent = dist_checkpointing.load(
        sharded_state_dict, os.path.join(directory, DIST_CKPT_DIR), strict=StrictHandling.RETURN_UNEXPECTED)
    required = sorted(k for k in absent if not k.startswith(OPTIONAL_STATE_PREFIXES))
    if required:
        raise CheckpointError(f"checkpoint {directory!r} lacks {len(required)} entries this model needs: "
                              f"{required[:5]}")
    return state


def model_tensors(loaded_state: dict) -> dict:
    """The model's entries of a loaded state (common entries such as the scheduler always load)."""
    return {k: v for k, v in loaded_state.items() if k not in TRAINING_STATE_KEYS}


def restore_model_tensors(model, loaded_state: dict) -> None:
    """Copy a loaded state into the model; optional state the checkpoint lacked keeps its values."""
    result = unwrap_model(model).load_state_dict(model_tensors(loaded_state), strict=False)
    wrong = [k for k in result.missing_keys if not k.startswith(OPTIONAL_STATE_PREFIXES)]
    if wrong or result.unexpected_keys:
        raise CheckpointError(f"loaded state does not match the model: missing {wrong[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
