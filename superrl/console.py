"""A clean console for `superrl.train` and `superrl.eval`: the upstream warnings known to be
harmless here are filtered, each by its message and the module it is attributed to, with the
reason it is harmless; every rank but global rank 0 prints errors only (exceptions and their
tracebacks still reach stderr). The entry points call `install()` before anything imports
megatron, because several of these warnings fire at megatron's import time."""
import logging
import os
import warnings
from typing import NamedTuple


class KnownWarning(NamedTuple):
    message: str  # regex, matched (case-insensitively) at the start of the warning's text
    module: str  # regex, matched at the start of the module the warning is attributed to
    reason: str  # why it is harmless in this framework


KNOWN_WARNINGS = (
    KnownWarning(r"Transformer Engine and Apex are not installed", r"megatron\.core\.",
                 "without TE/Apex megatron uses its local and torch implementations, which are the CPU "
                 "path; TE is the `gpu` extra, and NVIDIA Apex is optional (README: Install on a GPU cluster)"),
    KnownWarning(r"Apex is not installed\. Falling back to Torch Norm", r"megatron\.core\.models\.",
                 "the local layer spec's norm is torch's RMSNorm, the one the HF models use"),
    KnownWarning(r"full scope is deprecated\. Use empty cuda_graph_scope", r"megatron\.core\.transformer\.transformer_config\Z",
                 "megatron-core 0.16.1's own default cuda_graph_scope='full' trips its own deprecation in "
                 "TransformerConfig; no CUDA graphs are captured"),
    KnownWarning(r"The \.grad attribute of a Tensor that is not a leaf Tensor", r"megatron\.core\.optimizer\.optimizer\Z",
                 "DistributedOptimizer.zero_grad reads .grad of its fp32 shard views of the model's parameters "
                 "(upstream marks it 'throws grad-access warning'); those views never hold gradients, "
                 "the gradients live in the DDP buffers"),
    KnownWarning(r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
                 r"torch\.distributed\.c10d_logger\Z",
                 "torch 2.13 renames them (*_single) without changing them; megatron-core 0.16.1's DDP buffers, "
                 "distributed optimizer and sequence-parallel mappings call the old names"),
    KnownWarning(r"`load_state_dict` is deprecated", r"megatron\.core\.dist_checkpointing\.",
                 "megatron's torch_dist loader calls torch.distributed.checkpoint's old name for `load`"),
    KnownWarning(r"Please use DTensor instead and we are deprecating ShardedTensor", r"torch\.distributed\.checkpoint\.",
                 "megatron-core 0.16.1's torch_dist checkpoints are written and read as ShardedTensors"),
)


def install() -> None:
    """Once, at start-up, before megatron is imported (no process group exists yet: the global
    rank is torchrun's RANK, 0 for a lone process)."""
    for known in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=known.message, module=known.module)
    if int(os.environ.get("RANK", "0")) != 0:
        quiet_this_rank()


def quiet_this_rank() -> None:
    """Errors only: no warnings, log records below ERROR dropped (the Python loggers that inherit
    the root's level, transformers' own logger, torch's C++ log)."""
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    # read when transformers and torch are first imported (later than this call); a user's own
    # setting wins
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
