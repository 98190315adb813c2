"""Datasets: local jsonl/parquet (generic or GSM8K / MATH / HotpotQA schemas), prompts, batches."""
from superrl.data.prompt_batches import PromptDataLoader
from superrl.data.row_files import LoadedRows, load_rows
from superrl.data.prompts import Example, ExampleSet, PromptFormatter, build_examples
from superrl.data.rows import DataError

__all__ = ["DataError", "Example", "ExampleSet", "LoadedRows", "PromptDataLoader", "PromptFormatter",
           "build_examples", "load_rows"]
