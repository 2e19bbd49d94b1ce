"""Write a table to CSV, Parquet or JSON Lines, atomically (temp file + rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tandem.data.readers import detect_format

__all__ = ["write_table"]


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` to ``path`` in the format its suffix names; nothing is left half-written."""
    target = Path(path)
    fmt = detect_format(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if fmt == "csv":
            pacsv.write_csv(table, tmp)
        elif fmt == "parquet":
            # dictionary encoding made float writes 4.8x slower (DESIGN.md)
            pq.write_table(table, tmp, use_dictionary=False)
        else:
            with open(tmp, "w") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, default=str) + "\n")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
