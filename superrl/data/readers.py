"""Read raw records from local .jsonl and .parquet files, each with its origin ("file line N").

JSON lines are parsed here line by line rather than through Arrow's JSON reader, because a bad line
must be reported with its 1-based line number and must not stop the other lines from loading (with
``skip_bad_rows``); Arrow also fails a whole file when one row's type differs. Parquet files are
typed and are read with HF ``datasets``. Per-record problems (bad UTF-8, invalid JSON, a line that
is not an object) are yielded as ``DataError`` values, not raised, so the caller decides whether to
stop or skip; a file that cannot be read at all raises ``DataError`` naming it.
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
    # Bytes, decoded per line: one corrupt line must not hide the lines after it (or its number).
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, spacing) are not rows
            origin = f"{path} line {number}"
            yield origin, _parse_json_object(raw, origin)


def _parse_json_object(raw: bytes, origin: str) -> dict | DataError:
    try:
        line = raw.decode("utf-8-sig")  # -sig: tolerate the byte-order mark some editors write
    except UnicodeDecodeError as error:
        return DataError(f"{origin}: not valid UTF-8 (byte {error.start + 1}: {error.reason})")
    try:
        record = json.loads(line.rstrip())  # without the newline, an error at the end reports this line's column
    except json.JSONDecodeError as error:
        return DataError(f"{origin}: invalid JSON ({error.msg} at column {error.colno})")
    if not isinstance(record, dict):
        return DataError(f"{origin}: expected a JSON object, got {type(record).__name__}")
    return record


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    import datasets  # deferred: heavy, and only parquet needs it
    import pyarrow

    try:
        table = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except (pyarrow.ArrowException, datasets.exceptions.DatasetGenerationError) as error:
        raise DataError(f"{path}: not a readable parquet file ({error})") from error
    for number, record in enumerate(table, 1):
        yield f"{path} row {number}", record
