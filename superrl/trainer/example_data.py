"""Data files -> tokenised examples, for training and for held-out evaluation."""
from typing import NamedTuple

from superrl.config import Config
from superrl.data import ExampleSet, LoadedRows, build_examples, load_rows
from superrl.hf_config import ModelArch


class LoadedExamples(NamedTuple):
    rows: LoadedRows  # the rows read, and the ones skipped as bad
    example_set: ExampleSet  # the rows as token ids, with counts of what was dropped or truncated


def load_examples(config: Config, files: list, tokenizer, arch: ModelArch) -> LoadedExamples:
    rows = load_rows(files, skip_bad_rows=config.data.skip_bad_rows)
    # an expert row (prompt + expert response) must fit the positions the model has
    max_expert_len = arch.max_position_embeddings - config.data.max_prompt_len
    example_set = build_examples(rows.rows, tokenizer, max_prompt_len=config.data.max_prompt_len,
                                 template=config.data.prompt_template, max_expert_len=max_expert_len)
    return LoadedExamples(rows, example_set)
