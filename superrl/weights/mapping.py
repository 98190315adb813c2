"""THE mapping between HF parameter names/layouts and megatron-core's, used by the conversion
tools and by live weight sync alike.

Every megatron parameter is described by a `ParamMap`: which HF tensors it is made of, the
dimension tensor parallelism splits (all HF parts are split contiguously along it), and how the
parts of one TP shard are fused into the megatron shard (and split back). Fusing happens per
shard because megatron's fused tensors are not a plain concatenation of HF tensors at TP > 1:
QKV interleaves query groups, and linear_fc1 holds [gate_r; up_r] on each rank r.
"""
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from superrl.hf_config import ModelArch


@dataclass(frozen=True)
class ParamMap:
    megatron: str  # local megatron name, "{layer}" for the stage-local layer index
    hf: tuple  # HF names, "{layer}" for the global layer index
    tp_dim: Optional[int]  # None: replicated on every TP rank
    fuse: str = "none"  # none | qkv | gate_up
    vocab: bool = False  # rows are the (padded) vocabulary


def _layer_maps(arch: ModelArch, te_names: bool) -> list:
    L = "decoder.layers.{layer}."
    H = "model.layers.{layer}."
    attn_norm = "self_attention.linear_qkv.layer_norm_weight" if te_names else "input_layernorm.weight"
    mlp_norm = "mlp.linear_fc1.layer_norm_weight" if te_names else "pre_mlp_layernorm.weight"
    maps = [
        ParamMap(L + attn_norm, (H + "input_layernorm.weight",), None),
        ParamMap(L + "self_attention.linear_qkv.weight",
                 tuple(H + f"self_attn.{p}_proj.weight" for p in "qkv"), 0, "qkv"),
        ParamMap(L + "self_attention.linear_proj.weight", (H + "self_attn.o_proj.weight",), 1),
        ParamMap(L + mlp_norm, (H + "post_attention_layernorm.weight",), None),
        ParamMap(L + "mlp.linear_fc1.weight", (H + "mlp.gate_proj.weight", H + "mlp.up_proj.weight"), 0, "gate_up"),
        ParamMap(L + "mlp.linear_fc2.weight", (H + "mlp.down_proj.weight",), 1),
    ]
    if arch.qkv_bias:
        maps.append(ParamMap(L + "self_attention.linear_qkv.bias",
                             tuple(H + f"self_attn.{p}_proj.bias" for p in "qkv"), 0, "qkv"))
    if arch.qk_norm:  # one [head_dim] weight shared by every head: replicated over TP
        maps += [ParamMap(L + f"self_attention.{p}_layernorm.weight", (H + f"self_attn.{p}_norm.weight",), None)
                 for p in "qk"]
    return maps


def stage_param_maps(arch: ModelArch, pp_rank: int, pp_size: int, te_names: bool = False) -> list:
    """(ParamMap, local layer, global layer) for every megatron parameter held by one PP stage."""
    per_stage = arch.num_layers // pp_size
    entries = []
    if pp_rank == 0:
        entries.append((ParamMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), 0,
                                 vocab=True), None, None))
    for local in range(per_stage):
        for m in _layer_maps(arch, te_names):
            entries.append((m, local, pp_rank * per_stage + local))
    if pp_rank == pp_size - 1:
        entries.append((ParamMap("decoder.final_layernorm.weight", ("model.norm.weight",), None), None, None))
        if not arch.tied_embeddings:
            entries.append((ParamMap("output_layer.weight", ("lm_head.weight",), 0, vocab=True), None, None))
        elif pp_size > 1:  # megatron keeps a copy of the tied embedding on the last stage
            entries.append((ParamMap("output_layer.weight", ("model.embed_tokens.weight",), 0, vocab=True),
                            None, None))
    return entries


def megatron_name(m: ParamMap, local_layer) -> str:
    return m.megatron.format(layer=local_layer)


def hf_names(m: ParamMap, global_layer) -> list:
    return [n.format(layer=global_layer) for n in m.hf]


def all_hf_names(arch: ModelArch) -> set:
    """Every HF tensor name a checkpoint of this architecture must contain."""
    names = set()
    for entry, _, layer in stage_param_maps(arch, 0, 1):
        names.update(hf_names(entry, layer))
    return names


def hf_tensor_shapes(arch: ModelArch) -> dict:
    """The shape config.json promises for every HF tensor of `all_hf_names(arch)`."""
    h, ffn = arch.hidden_size, arch.ffn_hidden_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    per_layer = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (ffn, h), "mlp.up_proj.weight": (ffn, h), "mlp.down_proj.weight": (h, ffn),
    }
    if arch.qkv_bias:
        per_layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                          "self_attn.v_proj.bias": (kv,)})
    if arch.qk_norm:
        per_layer.update({"self_attn.q_norm.weight": (arch.head_dim,), "self_attn.k_norm.weight": (arch.head_dim,)})
    shapes = {f"model.layers.{i}.{name}": shape for i in range(arch.num_layers) for name, shape in per_layer.items()}
    shapes["model.embed_tokens.weight"] = (arch.vocab_size, h)
    shapes["model.norm.weight"] = (h,)
    if not arch.tied_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, h)
    return shapes


# ---- per-shard fuse / split -------------------------------------------------------------------

def _qkv_fuse(parts, arch: ModelArch):
    q, k, v = parts
    groups = k.shape[0] // arch.head_dim
    rest = q.shape[1:]
    q = q.reshape(groups, -1, *rest)
    k = k.reshape(groups, arch.head_dim, *rest)
    v = v.reshape(groups, arch.head_dim, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _qkv_split(shard, arch: ModelArch, tp_size: int):
    groups = arch.num_kv_heads // tp_size
    q_per_group = arch.num_heads // arch.num_kv_heads * arch.head_dim
    rest = shard.shape[1:]
    grouped = shard.reshape(groups, q_per_group + 2 * arch.head_dim, *rest)
    q, k, v = torch.split(grouped, [q_per_group, arch.head_dim, arch.head_dim], dim=1)
    return [t.reshape(-1, *rest) for t in (q, k, v)]


def fuse_shard(m: ParamMap, parts, arch: ModelArch) -> torch.Tensor:
    if m.fuse == "qkv":
        return _qkv_fuse(parts, arch)
    if m.fuse == "gate_up":
        return torch.cat(parts, dim=0)
    return parts[0]


def split_shard(m: ParamMap, shard: torch.Tensor, arch: ModelArch, tp_size: int) -> list:
    if m.fuse == "qkv":
        return _qkv_split(shard, arch, tp_size)
    if m.fuse == "gate_up":
        return list(torch.chunk(shard, 2, dim=0))
    return [shard]


# ---- whole-tensor conversions -----------------------------------------------------------------

def _pad_vocab(t: torch.Tensor, padded: int) -> torch.Tensor:
    if t.shape[0] == padded:
        return t
    return torch.cat([t, t.new_zeros(padded - t.shape[0], *t.shape[1:])], dim=0)


def to_megatron_shard(m: ParamMap, hf_tensors: list, arch: ModelArch, tp_rank: int, tp_size: int,
                      padded_vocab: int) -> torch.Tensor:
    """Full HF tensors -> this TP rank's megatron shard."""
    if m.vocab:
        hf_tensors = [_pad_vocab(t, padded_vocab) for t in hf_tensors]
    if m.tp_dim is not None:
        hf_tensors = [torch.chunk(t, tp_size, dim=m.tp_dim)[tp_rank] for t in hf_tensors]
    return fuse_shard(m, hf_tensors, arch).contiguous()


def to_hf_tensors(m: ParamMap, shards: list, arch: ModelArch) -> list:
    """All TP shards of one megatron parameter (in TP rank order) -> full HF tensors."""
    tp_size = len(shards)
    per_shard = [split_shard(m, s, arch, tp_size) for s in shards]
    if m.tp_dim is None:
        full = per_shard[0]
    else:
        full = [torch.cat([p[i] for p in per_shard], dim=m.tp_dim) for i in range(len(m.hf))]
    if m.vocab:
        full = [t[: arch.vocab_size] for t in full]
    return [t.contiguous() for t in full]


def hf_to_stage_state(get_hf: Callable[[str], torch.Tensor], arch: ModelArch, tp_rank: int, tp_size: int,
                      pp_rank: int, pp_size: int, padded_vocab: int, te_names: bool = False):
    """Yield (megatron local name, shard) for one (TP, PP) rank, reading HF tensors on demand."""
    for m, local, layer in stage_param_maps(arch, pp_rank, pp_size, te_names):
        parts = [get_hf(n) for n in hf_names(m, layer)]
        yield megatron_name(m, local), to_megatron_shard(m, parts, arch, tp_rank, tp_size, padded_vocab)


def exported_param_maps(arch: ModelArch, pp_rank: int, pp_size: int, te_names: bool = False) -> list:
    """`stage_param_maps` less the last stage's copy of a tied embedding: the first stage exports
    it. The export order of every HF export (tools, sync plan, sync transports)."""
    return [entry for entry in stage_param_maps(arch, pp_rank, pp_size, te_names)
            if not (entry[0].megatron == "output_layer.weight" and arch.tied_embeddings)]


def stage_state_to_hf(get_shards: Callable[[str, ParamMap], list], arch: ModelArch, pp_rank: int,
                      pp_size: int, te_names: bool = False) -> Iterator[tuple]:
    """Yield (HF name, full tensor) for one PP stage's parameters, in `exported_param_maps` order.

    `get_shards(megatron_name, param_map)` returns the TP shards of a parameter in rank order (a
    TP all-gather in live sync, a single tensor offline).
    """
    for m, local, layer in exported_param_maps(arch, pp_rank, pp_size, te_names):
        for name, tensor in zip(hf_names(m, layer), to_hf_tensors(m, get_shards(megatron_name(m, local), m), arch)):
            yield name, tensor
