"""Read a dataset from CSV, Parquet or JSON Lines: one file, or a folder of parts.

Everything downstream works on a ``pyarrow.Table``; readers are the one place that knows
file formats, and every failure becomes a :class:`~tandem.errors.DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from tandem.data.schema import duplicated_names
from tandem.errors import DataError

__all__ = ["FORMATS", "check_unique_columns", "detect_format", "list_parts", "read_table"]

#: file suffix -> format name
FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


def detect_format(path: Path) -> str:
    """The format of one file from its suffix; DataError for anything else."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        allowed = ", ".join(sorted(FORMATS))
        raise DataError(f"cannot tell the format of '{path}': expected a file ending in {allowed}")
    return fmt


def list_parts(path: str | Path) -> list[Path]:
    """The data files behind ``path``: the file itself, or a folder's data files sorted by name."""
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"'{p}' does not exist: give the path of a CSV/Parquet/JSONL file or folder"
        )
    if p.is_file():
        detect_format(p)
        return [p]
    parts = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in FORMATS)
    if not parts:
        raise DataError(f"folder '{p}' holds no .csv, .parquet or .jsonl files")
    kinds = {detect_format(f) for f in parts}
    if len(kinds) > 1:
        raise DataError(
            f"folder '{p}' mixes formats ({', '.join(sorted(kinds))}): keep one format per folder"
        )
    return parts


def _read_one(path: Path) -> pa.Table:
    fmt = detect_format(path)
    try:
        if fmt == "csv":
            return pacsv.read_csv(path)
        if fmt == "parquet":
            return pq.read_table(path)
        return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read '{path}' as {fmt}: {first}") from exc


def check_unique_columns(names: list[str], where: str) -> None:
    """DataError naming any column that appears more than once."""
    twice = duplicated_names(names)
    if twice:
        raise DataError(
            f"{where} has more than one column named {twice}: rename them so each name is unique"
        )


def read_table(path: str | Path) -> pa.Table:
    """Read a whole dataset into memory.

    Args:
        path: a ``.csv``, ``.parquet`` or ``.jsonl`` file, or a folder of such parts that share
            their columns.

    Returns:
        The rows of every part, in file order.

    Example:
        >>> table = read_table("data/train.parquet")  # doctest: +SKIP
    """
    parts = list_parts(path)
    tables = [_read_one(p) for p in parts]
    for part, table in zip(parts, tables, strict=True):
        check_unique_columns(table.column_names, str(part))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"the parts of '{path}' have incompatible columns: {exc}") from exc
    if table.num_rows == 0:
        raise DataError(f"'{path}' has no rows")
    return table
