"""``tandem monitor --current FILE``: a real file against a real model's frozen reference."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import TANDEM, cli_env, mixed_table


def monitor(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TANDEM, "monitor", *args], env=cli_env(home) | {"COLUMNS": "200"},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_shifted_column_is_named_and_a_clean_sample_is_not(
    models_home: Path, tmp_path: Path
) -> None:
    clean = mixed_table(n=3000, seed=11)
    pq.write_table(clean, tmp_path / "clean.parquet")
    x1 = clean.column("x1").to_numpy() + 0.5  # half a standard deviation
    shifted = clean.set_column(clean.schema.get_field_index("x1"), "x1", pa.array(x1))
    pq.write_table(shifted, tmp_path / "shifted.parquet")

    done = monitor(models_home, "mixed", "--current", str(tmp_path / "shifted.parquet"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["drifted"]
    inputs = [c for c in report["drifted_columns"] if not c.startswith("__")]
    assert inputs == ["x1"]  # and the model's outputs moved with it: prediction drift
    assert {c for c in report["drifted_columns"] if c.startswith("__")} <= {
        "__label",
        "__proba_no",
        "__proba_yes",
    }
    assert report["rows"] == 3000 and report["model"] == "mixed:1"
    x1_row = next(c for c in report["columns"] if c["column"] == "x1")
    assert x1_row["statistic"] > x1_row["threshold"] and min(x1_row["adjusted"].values()) < 0.05

    done = monitor(models_home, "mixed:1", "--current", str(tmp_path / "clean.parquet"))
    assert done.returncode == 0, done.stderr
    assert "no drift" in done.stdout and "x1" in done.stdout  # the table lists every column


@pytest.mark.parametrize(
    ("drop", "message"),
    [("city", "lacks the model's input column(s) ['city']"), (None, "no model")],
)
def test_bad_input_exits_2(
    models_home: Path, tmp_path: Path, drop: str | None, message: str
) -> None:
    table = mixed_table(n=50, seed=3)
    if drop:
        table = table.drop_columns([drop])
    pq.write_table(table, tmp_path / "rows.parquet")
    done = monitor(
        models_home, "mixed" if drop else "nope", "--current", str(tmp_path / "rows.parquet")
    )
    assert done.returncode == 2 and message in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
