"""Copy HF weights into (and read them back out of) a live, sharded megatron model."""
import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from superrl.hf_config import ModelArch
from superrl.weights import mapping
from superrl.weights.checkpoint_manifest import CheckpointError
from superrl.weights.hf_safetensors import HFCheckpointReader, check_hf_checkpoint


def unwrap_model(model):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def load_hf_weights(model, hf_dir: str, arch: ModelArch, padded_vocab: int) -> None:
    """Fill this rank's shard of `model` from an HF checkpoint directory. A model that replaces the
    LM head (the critic, models/value.py) names the mapped parameters it does not hold
    (`hf_unused_params`) and the ones it initialises itself (`own_param_prefixes`)."""
    model = unwrap_model(model)
    reader = HFCheckpointReader(hf_dir)
    check_hf_checkpoint(reader, arch)
    params = dict(model.named_parameters())
    tp_rank, tp_size = mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size()
    pp_rank, pp_size = mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_world_size()
    loaded = set()
    with torch.no_grad():
        for name, shard in mapping.hf_to_stage_state(reader, arch, tp_rank, tp_size, pp_rank, pp_size,
                                                     padded_vocab, model.uses_te_names):
            if name in getattr(model, "hf_unused_params", ()):
                continue
            if name not in params:
                raise CheckpointError(f"model has no parameter {name!r} (mapping and model disagree)")
            if params[name].shape != shard.shape:
                raise CheckpointError(f"{hf_dir}: tensor for {name!r} has shape {tuple(shard.shape)}, "
                                      f"model expects {tuple(params[name].shape)}")
            params[name].copy_(shard)
            loaded.add(name)
    left = {n for n in set(params) - loaded if not n.startswith(getattr(model, "own_param_prefixes", ()))}
    if left:
        raise CheckpointError(f"parameters not covered by the weight mapping: {sorted(left)}")


def gather_tp_shards(tensor: torch.Tensor) -> list:
    """All TP ranks' shards of one parameter, in TP rank order (collective over the TP group)."""
    group = mpu.get_tensor_model_parallel_group()
    size = dist.get_world_size(group)
    if size == 1:
        return [tensor]
    shards = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(shards, tensor.contiguous(), group=group)
    return shards


def export_hf_weights(model, arch: ModelArch):
    """Yield (HF name, full tensor) for this PP stage's parameters (collective over TP)."""
    model = unwrap_model(model)
    params = dict(model.named_parameters())
    pp_rank, pp_size = mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_world_size()
    yield from mapping.stage_state_to_hf(lambda name, m: gather_tp_shards(params[name].detach()), arch,
                                         pp_rank, pp_size, model.uses_te_names)
