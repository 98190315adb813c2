"""Token-budget micro-batches (optim.max_tokens_per_micro_batch): rows packed into one sequence per
micro-batch with document-boundary attention and per-row positions give the same losses, metrics
and weights as the rows run in fixed-size micro-batches (docs/packing.md)."""
import pytest
import torch

from dist_harness import run_torchrun
from trainer_runs import write_config
from superrl.config import ConfigError, load_config
from superrl.models.packed_attention import document_causal_mask
from superrl.trainer.batching import EXPERT, ROLLOUT, Row, pack_micro_batches
from superrl.trainer.packing import Packing
from superrl.trainer.step import IGNORE

LOSS_TOL = 1e-6  # packed vs unpacked losses and metrics (relative above 1)
WEIGHT_TOL = 1e-5  # after one AdamW step of lr 1e-3: AdamW's first step divides by |g|, so
#                    gradients equal within fp32 rounding move weights within ~1e-6 (measured)


def naive_pack(rows: list, lengths: list, width: int, fill) -> list:
    flat = [value for row, n in zip(rows, lengths) for value in row[:n]]
    return flat + [fill] * (width - len(flat))


def naive_positions(lengths: list, width: int) -> list:
    tail = width - sum(lengths)
    return [p for n in [*lengths, tail] for p in range(n)]


def test_packing_layout_against_a_naive_reference():
    lengths, width = (3, 1, 5, 2), 14
    rows = torch.arange(4 * 6).reshape(4, 6)  # rows 6 wide, each holding `lengths` own positions
    packing = Packing(lengths, width)
    assert packing.pack(rows, -1)[0].tolist() == naive_pack(rows.tolist(), lengths, width, -1)
    assert packing.position_ids("cpu")[0].tolist() == naive_positions(lengths, width)
    params = packing.seq_params("cpu")
    assert params.qkv_format == "thd" and params.cu_seqlens_q.dtype == torch.int32
    assert params.cu_seqlens_q.tolist() == params.cu_seqlens_kv.tolist() == [0, 3, 4, 9, 11, 14]
    assert params.max_seqlen_q == params.max_seqlen_kv == 5
    assert packing.padded(4).width == 16 and packing.padded(7).width == 14


def test_unpack_returns_each_rows_positions_and_routes_gradients_back():
    lengths = (2, 4, 1)
    packing = Packing(lengths, 9)
    packed = torch.randn(1, 9, requires_grad=True)
    rows = packing.unpack(packed, 5)
    want = torch.zeros(3, 5)
    offset = 0
    for i, n in enumerate(lengths):
        want[i, :n] = packed[0, offset:offset + n]
        offset += n
    assert torch.equal(rows, want)
    weights = torch.randn(3, 5)
    (rows * weights).sum().backward()
    grad = torch.zeros(9)  # each packed position gets its row position's weight; the tail nothing
    grad[:7] = torch.cat([weights[i, :n] for i, n in enumerate(lengths)])
    assert torch.equal(packed.grad[0], grad)


def test_document_causal_mask_against_a_naive_reference():
    segments = [3, 1, 4, 2]
    cu_seqlens = torch.tensor([0, 3, 4, 8, 10], dtype=torch.int32)
    segment_of = [s for s, n in enumerate(segments) for _ in range(n)]
    want = [[j > i or segment_of[i] != segment_of[j] for j in range(10)] for i in range(10)]
    mask = document_causal_mask(cu_seqlens)
    assert mask.shape == (1, 1, 10, 10) and mask.dtype == torch.bool
    assert mask[0, 0].tolist() == want


def row(kind: int, index: int, prompt_len: int, response_len: int) -> Row:
    return Row(kind, index, list(range(10, 10 + prompt_len)), list(range(50, 50 + response_len)))


def test_token_budget_packs_rows_first_fit_longest_first():
    # widths (prompt + response - 1): R1 5, E0 4, R0 6, E1 2, R2 3
    rows = [row(ROLLOUT, 1, 3, 3), row(EXPERT, 0, 2, 3), row(ROLLOUT, 0, 4, 3), row(EXPERT, 1, 2, 1),
            row(ROLLOUT, 2, 3, 1)]
    micro_batches = pack_micro_batches(rows, 4, pad_id=0, uniform_width=False, max_tokens=8)
    # first fit, longest first: 6 -> a, 5 -> b, 4 -> c, 3 -> b (5 + 3), 2 -> a (6 + 2)
    assert [mb.packing.lengths for mb in micro_batches] == [(6, 2), (5, 3), (4,)]
    assert [mb.packing.width for mb in micro_batches] == [8, 8, 4]
    assert [list(zip(mb.row_kind.tolist(), mb.row_index.tolist())) for mb in micro_batches] == [
        [(ROLLOUT, 0), (EXPERT, 1)], [(ROLLOUT, 1), (ROLLOUT, 2)], [(EXPERT, 0)]]
    by_key = {(r.kind, r.index): r for r in rows}
    for mb in micro_batches:  # the rows' layout is the unpacked one: each row's inputs and targets
        for i, key in enumerate(zip(mb.row_kind.tolist(), mb.row_index.tolist())):
            inputs, targets = by_key[key].inputs_and_targets()
            assert mb.tokens[i, :len(inputs)].tolist() == inputs
            assert mb.targets[i].tolist() == targets + [IGNORE] * (mb.targets.shape[1] - len(targets))
        packed = mb.packing.pack(mb.targets, IGNORE)[0].tolist()
        assert packed == naive_pack(mb.targets.tolist(), mb.packing.lengths, mb.packing.width, IGNORE)


def test_token_budget_with_pipeline_parallelism_gives_every_micro_batch_the_budget():
    rows = [row(ROLLOUT, i, 3, 1 + i) for i in range(5)]
    micro_batches = pack_micro_batches(rows, 2, pad_id=0, uniform_width=True, max_tokens=9)
    assert {mb.packing.width for mb in micro_batches} == {9}
    assert sum(len(mb.packing.lengths) for mb in micro_batches) == 5


def test_without_a_budget_micro_batches_are_not_packed():
    rows = [row(ROLLOUT, i, 3, 1 + i) for i in range(5)]
    assert all(mb.packing is None for mb in pack_micro_batches(rows, 2, pad_id=0, uniform_width=False))


def test_a_row_longer_than_the_budget_is_a_config_error_naming_both():
    rows = [row(ROLLOUT, 0, 3, 2), row(EXPERT, 0, 6, 5)]  # widths 4 and 10
    with pytest.raises(ConfigError, match=r"row of 10 tokens .*optim.max_tokens_per_micro_batch=9"):
        pack_micro_batches(rows, 2, pad_id=0, uniform_width=False, max_tokens=9)


def test_config_refuses_a_budget_below_the_longest_rollout_row():
    keys = ["data.max_prompt_len=64", "rollout.max_tokens=12"]
    assert load_config(None, [*keys, "optim.max_tokens_per_micro_batch=75"]).optim.max_tokens_per_micro_batch == 75
    assert load_config(None, keys).optim.max_tokens_per_micro_batch is None
    with pytest.raises(ConfigError, match=r"max_tokens_per_micro_batch=74 .*64 \+ 12 - 1 = 75"):
        load_config(None, [*keys, "optim.max_tokens_per_micro_batch=74"])


def test_memory_plan_sizes_a_packed_micro_batch_as_one_sequence_of_the_budget():
    from superrl.trainer import memory_plan as mp

    config = load_config(None, ["parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true",
                                "optim.max_tokens_per_micro_batch=401"])
    mb = mp.micro_batch(config, mp.layout(config, 4), stage=0)
    assert (mb.rows, mb.width, mb.in_flight) == (1, 402, 2)


def test_packed_forward_equals_each_row_alone(tiny_llama):
    """The local spec's packed path (block-diagonal mask, RoPE restarting per row) against each
    row run alone; the broken variants show the check sees attention leaking across rows and RoPE
    positions running on (in the rotated queries; the outputs hide it, RoPE being relative)."""
    result = run_torchrun("packed_forward.py", 1, ["--hf-dir", tiny_llama])[0]
    assert max(result["packed"].values()) < 1e-5, result
    assert result["plain_causal"]["logprobs"] > 1e-2, result
    assert result["mask_only"]["query"] > 1e-2, result


LAYOUTS = {  # world size, overrides, token budget (prompts are <= 64 tokens, responses 12)
    "tp1": (1, [], 128),
    # sequence parallelism pads each packed sequence to an even width; selective recomputation
    # runs the packed core attention inside megatron's checkpoint
    "tp2": (2, ["parallel.tp=2", "parallel.sequence_parallel=true", "model.recompute=selective"], 127),
    "pp2": (2, ["parallel.pp=2"], 128),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_packed_rl_step_equals_unpacked(tmp_path, tiny_llama, arith_files, layout):
    nproc, overrides, budget = LAYOUTS[layout]
    config = write_config(tmp_path / "run.yaml", tiny_llama, arith_files, tmp_path / "run", steps=1)
    results = run_torchrun("packed_rl_step.py", nproc,
                           ["--config", config, f"optim.max_tokens_per_micro_batch={budget}", *overrides])
    for result in results:
        built = result["micro_batches"]["packed"]
        assert all(mb["width"] is not None and mb["width"] <= budget for mb in built)
        assert max(mb["rows"] for mb in built) >= 2  # rows really share sequences
        kinds = {kind for mb in built for kind in mb["kinds"]}
        assert {ROLLOUT, EXPERT} <= kinds  # PG and SFT rows both trained
        assert all(mb["width"] is None for mb in result["micro_batches"]["unpacked"])
        if layout == "pp2":  # one shape for the pipeline schedule
            assert {mb["width"] for mb in built} == {budget}
        unpacked, packed = result["unpacked"], result["packed"]
        assert unpacked.keys() == packed.keys() and "loss" in unpacked and "grad_norm" in unpacked
        for key, value in unpacked.items():
            assert packed[key] == pytest.approx(value, rel=LOSS_TOL, abs=LOSS_TOL), key
        assert result["weight_change"] > 1e-4  # the step moved the weights
        assert result["weight_diff"] < WEIGHT_TOL, result["weight_diff"]
