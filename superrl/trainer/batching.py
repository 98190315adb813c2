"""Pack rollout rows (prompt + response) and expert rows (prompt + y*) into equal-shape micro-batches.

Pipeline schedules need every micro-batch of a step to share one [micro_batch_size, S] shape, so
rows are right-padded to the step's longest row and the last micro-batch is filled with padding
rows that carry no targets. Row kinds and row indices travel in `MicroBatch.extras`.
"""
from dataclasses import dataclass

import torch

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


def rollout_rows(examples: list, response_ids: list) -> tuple:
    """Rows for every (prompt, response) pair; also each row's local prompt index [B]."""
    rows, prompt_index = [], []
    for p, (ex, responses) in enumerate(zip(examples, response_ids)):
        for response in responses:
            rows.append(Row(ROLLOUT, len(rows), list(ex.prompt_ids), list(response)))
            prompt_index.append(p)
    return rows, torch.tensor(prompt_index, dtype=torch.long)


def expert_rows(examples: list, sft_prompts: list) -> tuple:
    """Rows of the expert trajectories y* of the prompts the switch routed to SFT."""
    rows, prompt_index = [], []
    for p in sft_prompts:
        rows.append(Row(EXPERT, len(rows), list(examples[p].prompt_ids), list(examples[p].expert_ids)))
        prompt_index.append(p)
    return rows, torch.tensor(prompt_index, dtype=torch.long)


def target_mask(rows: list) -> torch.Tensor:
    """[len(rows), S] float mask of the target tokens of each row (S = longest row)."""
    width = max((len(r.prompt_ids) + len(r.response_ids) - 1 for r in rows), default=1)
    mask = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        start = len(row.prompt_ids) - 1
        mask[i, start:start + len(row.response_ids)] = 1.0
    return mask


def pack_micro_batches(rows: list, micro_batch_size: int, pad_id: int) -> list:
    if not rows:
        raise ValueError("no rows to pack")
    width = max(len(r.prompt_ids) + len(r.response_ids) - 1 for r in rows)
    num_padding = -len(rows) % micro_batch_size
    tokens = torch.full((len(rows) + num_padding, width), pad_id, dtype=torch.long)
    targets = torch.full_like(tokens, IGNORE)
    kinds = torch.full((tokens.shape[0],), PADDING, dtype=torch.long)
    indices = torch.zeros_like(kinds)
    for i, row in enumerate(rows):
        inputs, row_targets = row.inputs_and_targets()
        tokens[i, :len(inputs)] = torch.tensor(inputs)
        targets[i, :len(row_targets)] = torch.tensor(row_targets)
        kinds[i], indices[i] = row.kind, row.index
    return [MicroBatch(tokens[s:s + micro_batch_size], targets[s:s + micro_batch_size],
                       {"kind": kinds[s:s + micro_batch_size], "index": indices[s:s + micro_batch_size]})
            for s in range(0, tokens.shape[0], micro_batch_size)]
