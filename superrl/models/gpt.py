"""The policy model: megatron-core's GPTModel for Llama/Qwen2/Qwen3 architectures, one PP stage per rank.

On the last stage, given targets, the forward returns per-token (log-prob, entropy) computed by the
fused output-layer kernel instead of logits, so full-vocab logits never exist during training.
"""
import importlib.util

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as mpu
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.transformer import TransformerConfig

from superrl.hf_config import ModelArch
from superrl.models.packed_attention import PackedDotProductAttention
from superrl.ops import FP8OutputLayer, FP8Recipe, fused_linear_logprobs_and_entropy
from superrl.rope import inverse_frequencies


def use_transformer_engine(setting: str) -> bool:
    """`model.transformer_engine`: auto (TE when importable and on GPU), on, off."""
    available = importlib.util.find_spec("transformer_engine") is not None and torch.cuda.is_available()
    if setting == "on" and not available:
        raise RuntimeError("model.transformer_engine=on but transformer_engine (with CUDA) is not "
                           "available; install the `gpu` extra or set model.transformer_engine=auto")
    return available and setting != "off"


RECOMPUTE = {  # model.recompute -> megatron's activation recomputation settings
    "none": {},
    "selective": {"recompute_granularity": "selective"},  # core attention, megatron's default module
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}


def transformer_config(arch: ModelArch, tp: int, pp: int, dtype: torch.dtype = torch.float32,
                       sequence_parallel: bool = False, recompute: str = "none") -> TransformerConfig:
    """`dtype`: the parameters' (bfloat16: megatron's mixed precision, see trainer/model_setup.py);
    `sequence_parallel`, `recompute`: megatron's memory switches (config `parallel.sequence_parallel`,
    `model.recompute`)."""
    on_gpu = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads, kv_channels=arch.head_dim,
        ffn_hidden_size=arch.ffn_hidden_size, normalization="RMSNorm", layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16,
        use_cpu_initialization=not on_gpu, perform_initialization=True,
        # Fused kernels are CUDA-only; the unfused paths are what CPU runs and tests compare.
        bias_activation_fusion=False, bias_dropout_fusion=False, masked_softmax_fusion=False,
        persist_layer_norm=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        # Our losses arrive already normalised by global counts: no per-micro-batch averaging.
        calculate_per_token_loss=True,
        sequence_parallel=sequence_parallel, **RECOMPUTE[recompute],
    )


class PolicyModel(GPTModel):
    """GPTModel whose last stage returns (logprobs, entropy) [b, s] when called with `labels`.

    The submodule `fp8_output_layer` (added by `use_fp8_output_layer`, last stage only) swaps the
    output GEMM of that fused kernel for the FP8 one; the training loop does not know which runs.
    """

    logprob_chunk_size = None

    def use_fp8_output_layer(self, amax_history: int) -> None:
        # A registered submodule, created where the weights are: its scaling buffers move with the
        # model and are saved in its checkpoints (as replicated tensors: every TP rank holds the
        # same state, see superrl/ops/fp8_projection.py).
        if self.post_process:
            layer = FP8OutputLayer(FP8Recipe(amax_history_len=amax_history))
            self.add_module("fp8_output_layer", layer.to(next(self.parameters()).device))

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, **kwargs):
        if not self.post_process or labels is None:
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)
        weight = (self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights
                  else self.output_layer.weight)
        if self.config.sequence_parallel:  # this rank holds s/tp positions; the loss needs all of them
            # The fused kernel all-reduces its hidden gradient over TP already: the gather's
            # backward only takes this rank's positions back (no second reduction).
            hidden_states = gather_from_sequence_parallel_region(hidden_states, tensor_parallel_output_grad=False)
        b, s = labels.shape
        hidden = hidden_states.transpose(0, 1).reshape(b * s, -1)
        fp8 = self._modules.get("fp8_output_layer")
        fused = fp8.logprobs_and_entropy if fp8 is not None else fused_linear_logprobs_and_entropy
        logprobs, entropy = fused(hidden, weight, labels.reshape(-1), tp_group=mpu.get_tensor_model_parallel_group(),
                                  chunk_size=self.logprob_chunk_size)
        return logprobs.view(b, s), entropy.view(b, s)


def layer_spec(arch: ModelArch, transformer_engine: str):
    """The decoder layer spec: TE's when it runs, else the local one with packed-sequence attention."""
    if use_transformer_engine(transformer_engine):
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.qk_norm)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=arch.qk_norm)
    # packed micro-batches (trainer/packing.py) need a core attention that takes PackedSeqParams
    spec.submodules.self_attention.submodules.core_attention = PackedDotProductAttention
    return spec


def build_gpt_model(model_class, arch: ModelArch, tp: int, pp: int, padded_vocab: int,
                    transformer_engine: str = "auto", dtype: torch.dtype = torch.float32,
                    tied_embeddings: bool = None, **switches):
    """This rank's PP stage of a `model_class` (a GPTModel) of `arch` (parameters randomly
    initialised; load weights after). `tied_embeddings`: None keeps the architecture's.
    `switches`: transformer_config's sequence_parallel and recompute."""
    config = transformer_config(arch, tp, pp, dtype, **switches)
    model = model_class(
        config=config, transformer_layer_spec=layer_spec(arch, transformer_engine), vocab_size=padded_vocab,
        max_sequence_length=arch.max_position_embeddings,
        pre_process=mpu.is_pipeline_first_stage(), post_process=mpu.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=arch.tied_embeddings if tied_embeddings is None else tied_embeddings,
        position_embedding_type="rope", rotary_base=arch.rope_theta, parallel_output=True,
    )
    model.uses_te_names = use_transformer_engine(transformer_engine)
    _use_hf_rope_frequencies(model, arch)
    return model


def build_policy_model(arch: ModelArch, tp: int, pp: int, padded_vocab: int,
                       transformer_engine: str = "auto", dtype: torch.dtype = torch.float32,
                       **switches) -> PolicyModel:
    """This rank's PP stage of the policy (build_gpt_model)."""
    return build_gpt_model(PolicyModel, arch, tp, pp, padded_vocab, transformer_engine, dtype, **switches)


def _use_hf_rope_frequencies(model: GPTModel, arch: ModelArch) -> None:
    """megatron's RoPE knows theta and a fixed Llama 3.1 scaling; the HF config's rope type and
    scaling fields (Llama 3.2's factor 32, linear) come from the same definition the rollout engine
    uses. Set before the first forward: megatron caches the embedding per sequence length."""
    rotary = model.rotary_pos_emb
    rotary.inv_freq = inverse_frequencies(arch.rope, arch.head_dim).to(rotary.inv_freq.device)
