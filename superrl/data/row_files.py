"""Load the rows of a list of data files into generic rows (see ``superrl.data.rows``).

The schema (generic, gsm8k, math, hotpotqa) is detected per file from its first well-formed
record. A malformed row raises ``DataError`` naming the file and line/row, unless
``skip_bad_rows=True``: then it is left out, its error kept in ``LoadedRows.skipped`` (the trainer
logs the count as ``data/skipped_rows``) and the first few errors are logged as a warning, so the
user can see which rows were lost and why. A file that cannot be read at all is never skipped.
A ``reasoning_gym:`` entry generates rows instead of reading a file (see ``superrl.data.gym``).
"""
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from superrl.data.adapters import adapt, detect_schema
from superrl.data.gym import GYM_PREFIX, gym_rows
from superrl.data.readers import iter_records
from superrl.data.rows import DataError

SKIPPED_SHOWN = 5  # skipped-row errors quoted in the warning; the rest are only counted
_log = logging.getLogger(__name__)


@dataclass
class LoadedRows:
    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one error message per skipped row

    @property
    def data_sources(self) -> set[str]:
        return {row["data_source"] for row in self.rows}


def load_rows(files: str | Path | Sequence[str | Path], skip_bad_rows: bool = False) -> LoadedRows:
    loaded = LoadedRows()
    for path in [files] if isinstance(files, (str, Path)) else files:
        if str(path).startswith(GYM_PREFIX):
            loaded.rows.extend(gym_rows(str(path)))
        else:
            _load_file(path, loaded, skip_bad_rows)
    if not loaded.rows:
        first = f"; the first: {loaded.skipped[0]}" if loaded.skipped else ""
        raise DataError(f"no usable rows in {files!r} ({len(loaded.skipped)} skipped{first})")
    if loaded.skipped:
        _warn_skipped(loaded.skipped)
    return loaded


def _warn_skipped(skipped: list[str]) -> None:
    more = len(skipped) - SKIPPED_SHOWN
    _log.warning("superrl: skipped %d malformed dataset rows (data.skip_bad_rows=true):\n  %s%s", len(skipped),
                 "\n  ".join(skipped[:SKIPPED_SHOWN]), f"\n  ... and {more} more" if more > 0 else "")


def _load_file(path: str | Path, loaded: LoadedRows, skip_bad_rows: bool) -> None:
    schema = None
    for origin, record in iter_records(path):
        try:
            if isinstance(record, DataError):
                raise record
            schema = schema or detect_schema(record.keys(), origin)
            loaded.rows.append(adapt(schema, record, origin))
        except DataError as error:
            if not skip_bad_rows:
                raise
            loaded.skipped.append(str(error))
