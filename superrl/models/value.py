"""The critic: the policy's architecture (models/gpt.py) with a scalar value head instead of the
vocabulary output layer, TP- and PP-sharded as the policy is.

The head is one `Linear(hidden, 1)` replicated on every TP rank (a [1, h] weight is not worth
splitting). Its input, the last stage's final-norm hidden states, is the same on every TP rank
(after sequence parallelism's gather, below), so every TP rank computes the same values, the same
loss and the same head gradient: no TP reduction is needed for it, which matters because megatron's
finalize_model_grads only reduces the parameters it knows about (tested in test_critic.py).

Initialisation: the trunk comes from the policy's (or `critic.*`'s) weights; the head starts at
zero, weight and bias. V = 0 everywhere at step 0, so the first GAE advantages are the plain
discounted (KL-shaped) returns rather than returns minus a random baseline, and no random draw
depends on the TP layout (a random head would need the same draw on every TP rank to stay
replicated). A zero head still learns: its gradient is the hidden state times dL/dV, and the trunk's
gradient becomes nonzero from the second optimizer step on.
"""
import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

from superrl.hf_config import ModelArch
from superrl.models.gpt import build_gpt_model

VALUE_HEAD = "value_head."


class ValueModel(GPTModel):
    """GPTModel whose last stage returns the values `(values,)` [b, s] when called with `labels`
    (only their shape is read: the value at position t is V of the state that predicts token t+1,
    aligned with the policy's log-prob there)."""

    # What weight loading (weights/load.py) skips: the mapping's LM head, which this model does not
    # hold, and the head it initialises itself.
    hf_unused_params = frozenset({"output_layer.weight"})
    own_param_prefixes = (VALUE_HEAD,)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.post_process:
            device = next(self.parameters()).device
            del self.output_layer  # the vocabulary projection: never used, never trained
            self.value_head = torch.nn.Linear(self.config.hidden_size, 1, dtype=self.config.params_dtype,
                                              device=device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        # LanguageModule's marks the output layer's entry for vocabulary padding; the critic has none
        return MegatronModule.sharded_state_dict(self, prefix, sharded_offsets,
                                                 ensure_metadata_has_dp_cp_group(metadata))

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, **kwargs):
        if not self.post_process:
            return hidden_states
        if self.config.sequence_parallel:  # this rank holds s/tp positions; the head needs all of them
            # Every TP rank then holds the full hidden-state gradient of the replicated head (the
            # same on each): the gather's backward takes this rank's positions, no reduction.
            hidden_states = gather_from_sequence_parallel_region(hidden_states, tensor_parallel_output_grad=False)
        return (self.value_head(hidden_states).squeeze(-1).transpose(0, 1),)  # [s, b, 1] -> [b, s]


def build_value_model(arch: ModelArch, tp: int, pp: int, padded_vocab: int, transformer_engine: str = "auto",
                      dtype: torch.dtype = torch.float32, **switches) -> ValueModel:
    """This rank's PP stage of the critic; untied embeddings (the critic has no output layer to tie)."""
    return build_gpt_model(ValueModel, arch, tp, pp, padded_vocab, transformer_engine, dtype,
                           tied_embeddings=False, **switches)
