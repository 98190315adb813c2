"""Read raw records from local .jsonl and .parquet files, each with its origin ("file line N").

JSON lines are parsed here line by line rather than through Arrow's JSON reader, because a bad line
must be reported with its 1-based line number and must not stop the other lines from loading (with
``skip_bad_rows``); Arrow also fails a whole file when one row's type differs. Parquet files are
typed and are read with HF ``datasets``. Per-record problems are yielded as ``DataError`` values,
not raised, so the caller decides whether to stop or skip.
"""
import json
from collections.abc import Iterator
from pathlib import Path

from superrl.data.rows import DataError

SUFFIXES = (".jsonl", ".parquet")


def iter_records(path: str | Path) -> Iterator[tuple[str, dict | DataError]]:
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use {' or '.join(SUFFIXES)})")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    return _jsonl_records(path) if path.suffix == ".jsonl" else _parquet_records(path)


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue  # blank lines (a trailing newline, spacing) are not rows
            origin = f"{path} line {number}"
            yield origin, _parse_json_object(line, origin)


def _parse_json_object(line: str, origin: str) -> dict | DataError:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return DataError(f"{origin}: invalid JSON ({error.msg} at column {error.colno})")
    if not isinstance(record, dict):
        return DataError(f"{origin}: expected a JSON object, got {type(record).__name__}")
    return record


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    import datasets  # deferred: heavy, and only parquet needs it

    table = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    for number, record in enumerate(table, 1):
        yield f"{path} row {number}", record
