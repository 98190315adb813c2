"""Pack rollout rows (prompt + response) and expert rows (prompt + y*) into micro-batches.

Rows are sorted by length so rows of similar length share a micro-batch (little padding); under
the loss-normalisation contract (model_setup.py) grouping does not change what is optimised. Pipeline
schedules need every micro-batch of a step to share one [micro_batch_size, S] shape, so with PP > 1
rows are padded to the step's longest row; without PP each micro-batch is only as wide as its own
longest row. With PP the last micro-batch is filled with padding rows that carry no targets; without
it the last micro-batch just holds fewer rows (padding rows would cost as much as real ones). Each row's kind
and index travel in `MicroBatch.row_kind` / `MicroBatch.row_index`.

With a token budget (optim.max_tokens_per_micro_batch) rows are packed instead: longest first, each
into the first micro-batch with room left (first-fit decreasing), and the model runs each
micro-batch as one sequence of at most that many positions (packing.py). With PP > 1 every packed
sequence is padded to the budget, so a step pads at most one budget's worth per micro-batch
instead of every row to the step's longest.

A response with no tokens (an engine may return one; the embedded engine always returns at least
the EOS it stopped on) is a row without targets: it adds nothing to the loss or its token counts,
and rows are at least one position wide, so a micro-batch never has zero width.
"""
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

from superrl.config import ConfigError
from superrl.trainer.packing import Packing
from superrl.trainer.step import IGNORE, MicroBatch

ROLLOUT, EXPERT, PADDING = 0, 1, 2


@dataclass(frozen=True)
class Row:
    kind: int  # ROLLOUT | EXPERT
    index: int  # index among the step's local rows of that kind
    prompt_ids: list
    response_ids: list

    def inputs_and_targets(self) -> tuple:
        tokens = self.prompt_ids + self.response_ids
        targets = [IGNORE] * (len(self.prompt_ids) - 1) + self.response_ids
        return tokens[:-1], targets


class RowSet(NamedTuple):
    """The step's local rows of one kind, and the local prompt each row belongs to."""
    rows: list  # [Row], Row.index = position in this list
    prompt_index: torch.Tensor  # [len(rows)] long


def rollout_rows(examples: list, response_ids: list) -> RowSet:
    """Rows for every (prompt, response) pair."""
    rows, prompt_index = [], []
    for p, (ex, responses) in enumerate(zip(examples, response_ids)):
        for response in responses:
            rows.append(Row(ROLLOUT, len(rows), list(ex.prompt_ids), list(response)))
            prompt_index.append(p)
    return RowSet(rows, torch.tensor(prompt_index, dtype=torch.long))


def expert_rows(examples: list, sft_prompts: list) -> RowSet:
    """Rows of the expert trajectories y* of the prompts the switch routed to SFT."""
    rows, prompt_index = [], []
    for p in sft_prompts:
        rows.append(Row(EXPERT, len(rows), list(examples[p].prompt_ids), list(examples[p].expert_ids)))
        prompt_index.append(p)
    return RowSet(rows, torch.tensor(prompt_index, dtype=torch.long))


def target_mask(rows: list) -> torch.Tensor:
    """[len(rows), S] float mask of the target tokens of each row (S = longest row)."""
    mask = torch.zeros(len(rows), max(map(_row_width, rows), default=1))
    for i, row in enumerate(rows):
        start = len(row.prompt_ids) - 1
        mask[i, start:start + len(row.response_ids)] = 1.0
    return mask


def token_width(values: torch.Tensor, width: int) -> torch.Tensor:
    """Per-row token tensors [R, S] in the rows' layout (target_mask's) cut or zero-padded to a
    micro-batch's width: rows are left-aligned in both, and a micro-batch is as wide as its own
    longest row (or, with PP, the widest row of the step, expert rows included)."""
    extra = width - values.shape[1]
    return values[:, :width] if extra <= 0 else torch.nn.functional.pad(values, (0, extra))


def to_row_layout(values: torch.Tensor, rows: list, width: int) -> torch.Tensor:
    """Per-response-token values [R, T] (token t of each row's response at column t) in the rows'
    layout [R, width] (target_mask's: at the position predicting it), 0 elsewhere."""
    out = torch.zeros(len(rows), width, dtype=values.dtype)
    for i, row in enumerate(rows):
        start, n = len(row.prompt_ids) - 1, len(row.response_ids)
        out[i, start:start + n] = values[i, :n]
    return out


def _row_width(row: Row) -> int:
    return max(len(row.prompt_ids) + len(row.response_ids) - 1, 1)


def pack_micro_batches(rows: list, micro_batch_size: int, pad_id: int, uniform_width: bool,
                       max_tokens=None) -> list:
    """`micro_batch_size` rows per micro-batch, or with `max_tokens` set, packed micro-batches of at
    most that many tokens (`micro_batch_size` is then unused)."""
    if not rows:
        raise ValueError("no rows to pack")
    if max_tokens is not None:
        return [_packed_micro_batch(group, pad_id, max_tokens if uniform_width else None)
                for group in _first_fit(rows, max_tokens)]
    rows = sorted(rows, key=_row_width)
    step_width = _row_width(rows[-1])
    if uniform_width:  # the pipeline's one shape; without PP the last micro-batch is just smaller
        rows += [None] * (-len(rows) % micro_batch_size)  # padding rows
    return [_micro_batch(rows[s:s + micro_batch_size], pad_id, step_width if uniform_width else None)
            for s in range(0, len(rows), micro_batch_size)]


def _micro_batch(rows: list, pad_id: int, width) -> MicroBatch:
    width = width or max(_row_width(r) for r in rows if r is not None)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full_like(tokens, IGNORE)
    kinds = torch.full((len(rows),), PADDING, dtype=torch.long)
    indices = torch.zeros_like(kinds)
    for i, row in enumerate(rows):
        if row is None:
            continue
        inputs, row_targets = row.inputs_and_targets()
        tokens[i, :len(inputs)] = torch.tensor(inputs)
        targets[i, :len(row_targets)] = torch.tensor(row_targets)
        kinds[i], indices[i] = row.kind, row.index
    return MicroBatch(tokens, targets, row_kind=kinds, row_index=indices)


def _first_fit(rows: list, max_tokens: int) -> list:
    """Rows grouped longest first, each into the first group it fits in, none over `max_tokens`."""
    rows = sorted(rows, key=_row_width, reverse=True)
    longest = rows[0]
    if _row_width(longest) > max_tokens:
        raise ConfigError(f"a row of {_row_width(longest)} tokens ({len(longest.prompt_ids)} prompt + "
                          f"{len(longest.response_ids)} response, less the last) does not fit "
                          f"optim.max_tokens_per_micro_batch={max_tokens}; raise it to at least {_row_width(longest)}")
    groups, room = [], []
    for row in rows:
        width = _row_width(row)
        slot = next((g for g, free in enumerate(room) if free >= width), len(groups))
        if slot == len(groups):
            groups.append([])
            room.append(max_tokens)
        groups[slot].append(row)
        room[slot] -= width
    return groups


def _packed_micro_batch(rows: list, pad_id: int, width) -> MicroBatch:
    """`rows` in their usual layout, run as one sequence of `width` positions (default: just theirs)."""
    lengths = tuple(_row_width(row) for row in rows)
    return dataclasses.replace(_micro_batch(rows, pad_id, None), packing=Packing(lengths, width or sum(lengths)))
