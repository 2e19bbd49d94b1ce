from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tandem.data.readers import read_table
from tandem.data.writers import write_table
from tandem.errors import DataError

TABLE = pa.table({"a": [1.5, 2.5, None], "b": ["x", "y", "z"]})


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_write_then_read_round_trips(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    write_table(TABLE, path)
    back = read_table(path)
    assert back.column("a").to_pylist() == [1.5, 2.5, None]
    assert back.column("b").to_pylist() == ["x", "y", "z"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_folder_of_parts_reads_in_name_order(tmp_path: Path) -> None:
    pq.write_table(TABLE.slice(2), tmp_path / "part-1.parquet")
    pq.write_table(TABLE.slice(0, 2), tmp_path / "part-0.parquet")
    assert read_table(tmp_path).column("b").to_pylist() == ["x", "y", "z"]


def test_folder_mixing_formats_is_refused(tmp_path: Path) -> None:
    pq.write_table(TABLE, tmp_path / "a.parquet")
    pacsv.write_csv(TABLE, tmp_path / "b.csv")
    with pytest.raises(DataError, match="mixes formats"):
        read_table(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "cannot read"),
        ("header.csv", b"a,b\n", "has no rows"),
        ("bad.parquet", b"not parquet at all", "cannot read"),
        ("bad.jsonl", b"{not json", "cannot read"),
        ("data.txt", b"a\n1\n", "cannot tell the format"),
    ],
)
def test_unreadable_files_name_the_file(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_table(path)
    assert name in str(info.value)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="holds no"):
        read_table(tmp_path)


def test_jsonl_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"a": i, "b": str(i)}) for i in range(3)))
    assert read_table(path).num_rows == 3
