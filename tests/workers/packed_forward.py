"""Worker: the local-spec model on rows packed into one sequence against each row run alone.

For each way of running the packed sequence, reports the largest |packed - alone| over the rows'
own positions of the last stage's log-probs and entropy, and of the first layer's rotated queries
(what core attention receives, so RoPE's positions show). Variants: megatron's packed path
(PackedSeqParams), and two broken ones the test expects to differ: plain causal attention over the
whole sequence, and the block-diagonal mask alone (RoPE positions running on across rows; with the
mask, RoPE's relative form hides that in the outputs, but not in the queries).

  worker --hf-dir DIR   (one process)
"""
import argparse

import torch

from dist_harness import write_result
from superrl.distributed import destroy_distributed, init_distributed
from superrl.hf_config import load_arch
from superrl.models.gpt import build_policy_model
from superrl.models.packed_attention import document_causal_mask
from superrl.trainer.packing import Packing

LENGTHS = (5, 9, 1, 7)  # rows of different lengths, one of a single position
TAIL = 3  # padding after the rows, as a pipeline-uniform width adds


class QueryRecorder:
    """The query tensor the first layer's core attention receives, as [positions, heads, dim]."""

    def __init__(self, model):
        self.query = None
        model.decoder.layers[0].self_attention.core_attention.register_forward_pre_hook(self.record)

    def record(self, module, args):
        self.query = args[0].reshape(args[0].shape[0], *args[0].shape[-2:])


def alone(model, recorder, row, target) -> tuple:
    positions = torch.arange(row.shape[0]).unsqueeze(0)
    logprobs, entropy = model(row.unsqueeze(0), positions, None, labels=target.unsqueeze(0))
    return logprobs[0], entropy[0], recorder.query


def packed(model, recorder, packing: Packing, tokens, targets, variant: str) -> tuple:
    inputs, labels = packing.pack(tokens, 0), packing.pack(targets, -100)
    positions, params = packing.position_ids("cpu"), packing.seq_params("cpu")
    if variant == "packed":
        outputs = model(inputs, positions, None, labels=labels, packed_seq_params=params)
    else:
        mask = document_causal_mask(params.cu_seqlens_q) if variant == "mask_only" else None
        outputs = model(inputs, positions, mask, labels=labels)
    return outputs[0][0], outputs[1][0], recorder.query


def max_row_diff(packing: Packing, packed_seq: torch.Tensor, rows: list) -> float:
    starts = [sum(packing.lengths[:i]) for i in range(len(rows))]
    return max(float((packed_seq[s:s + len(r)] - r).abs().max()) for s, r in zip(starts, rows))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf-dir", required=True)
    args = p.parse_args()
    init_distributed(1, 1, seed=0)
    arch = load_arch(args.hf_dir)
    model = build_policy_model(arch, 1, 1, arch.padded_vocab_size(128)).eval()
    recorder = QueryRecorder(model)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, arch.vocab_size, (len(LENGTHS), max(LENGTHS)), generator=g)
    targets = torch.randint(0, arch.vocab_size, tokens.shape, generator=g)
    packing = Packing(LENGTHS, sum(LENGTHS) + TAIL)
    result = {}
    with torch.no_grad():
        reference = [alone(model, recorder, tokens[i, :n], targets[i, :n]) for i, n in enumerate(LENGTHS)]
        for variant in ("packed", "plain_causal", "mask_only"):
            outputs = packed(model, recorder, packing, tokens, targets, variant)
            result[variant] = {name: max_row_diff(packing, outputs[k], [r[k] for r in reference])
                               for k, name in enumerate(("logprobs", "entropy", "query"))}
    write_result(result)
    destroy_distributed()


if __name__ == "__main__":
    main()
