"""Process-group start-up: torchrun's environment (or a lone process), megatron parallel state.

nccl on GPU, gloo on CPU (with megatron_patches applied). The layout is megatron's default order
tp-cp-ep-dp-pp: TP ranks are adjacent (inside a node), PP stages furthest apart.
"""
import datetime
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import megatron_patches


@dataclass(frozen=True)
class ParallelContext:
    """This rank's place in the world and in megatron's TP / PP / DP groups."""
    rank: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SINGLE_PROCESS_ENV: dict = {}  # what _ensure_env_for_single_process added, removed at teardown


def _ensure_env_for_single_process() -> None:
    """Let `python -m superrl.train` run without torchrun, as a world of one. The variables are
    taken back when the world ends: a process that runs a tool in-process (a test, a notebook)
    must not hand a stale rank and port to every process it starts afterwards."""
    if "RANK" in os.environ:
        return
    added = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    _SINGLE_PROCESS_ENV.update({k: v for k, v in added.items() if k not in os.environ})
    os.environ.update(added)


def _remove_single_process_env() -> None:
    for key in _SINGLE_PROCESS_ENV:
        os.environ.pop(key, None)
    _SINGLE_PROCESS_ENV.clear()


def world_size_from_env() -> int:
    """The world size torchrun passes in the environment (1 without torchrun), known before any
    process group exists, so the config can be checked against it first."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(tp: int, pp: int, seed: int, timeout_s: float = 600.0) -> ParallelContext:
    """Create the default group and megatron's TP/PP/DP groups; seed every RNG per rank."""
    _ensure_env_for_single_process()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    megatron_patches.apply()  # CPU patches without CUDA; the torch-Adam fix on any device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    from megatron.core import parallel_state as mpu

    if not mpu.model_parallel_is_initialized():
        # megatron's own groups (TP, PP, DP, ...) get the same time-out; its default is 30 minutes
        mpu.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                      distributed_timeout_minutes=timeout_s / 60)
    ctx = ParallelContext(
        rank=dist.get_rank(),
        tp_rank=mpu.get_tensor_model_parallel_rank(), tp_size=tp,
        pp_rank=mpu.get_pipeline_model_parallel_rank(), pp_size=pp,
        dp_rank=mpu.get_data_parallel_rank(), dp_size=mpu.get_data_parallel_world_size(),
    )
    seed_everything(seed)
    return ctx


def seed_everything(seed: int) -> None:
    """Same seed on every rank: CPU-initialised weights and sampling agree across ranks, and
    megatron's tracker derives the per-TP-rank streams (dropout) from it."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)  # after: on CPU the call above reseeded the shared CPU generator


def destroy_distributed() -> None:
    from megatron.core import parallel_state as mpu

    mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    _remove_single_process_env()


def abort_distributed() -> None:
    """After a failure on this rank: abort every process group instead of the teardown that waits
    for peers (NCCL's destroy waits for in-flight collectives; abort cancels them), so this rank
    exits at once and its peers' collectives fail instead of waiting. The same call on gloo."""
    if dist.is_initialized():
        dist.distributed_c10d._abort_process_group()
    _remove_single_process_env()
