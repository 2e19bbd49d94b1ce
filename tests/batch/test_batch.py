"""`tandem batch`: the same numbers as predict and the server, formats, the checks before any
work, bad rows, existing outputs, the closing table and the job record."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import tandem
from tandem import Registry, Settings
from tandem.batch import BatchOptions, run_batch
from tandem.errors import DataError, SchemaError, UsageError
from tests.helpers import TANDEM, cli_env, mixed_table, numeric_table
from tests.serving.conftest import running_server
from tests.serving.test_oip import post


def run_cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TANDEM, *args], env=cli_env(home), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def rows_with_id(n: int = 300, seed: int = 5) -> pa.Table:
    table = mixed_table(n, seed=seed).drop(["target"])
    return table.append_column("id", pa.array(np.arange(1000, 1000 + n)))


def test_batch_predict_and_the_server_give_the_same_numbers(
    models_home: Path, tmp_path: Path
) -> None:
    """Identical where the rows run as one batch on sessions with the same threads: batch (one
    single-threaded session per core) and the server (one thread). ``tandem predict`` runs one
    session on every core, and batches cut otherwise group other rows: there ONNX Runtime's
    tree ensemble sums in another order, which moves the last bit or two, so labels are
    equal and probabilities equal to 1e-12."""
    rows = rows_with_id(200)
    source = tmp_path / "rows.parquet"
    pq.write_table(rows, source)
    columns = ("x1", "x2", "city", "rooms", "garden")
    body = {"inputs": [_tensor(name, rows.column(name)) for name in columns]}
    with running_server(["mixed"], models_home) as server:
        status, answer, _ = post(server, "/v2/models/mixed/infer", body)
    assert status == 200, answer
    served = {o["name"]: o["data"] for o in answer["outputs"]}
    done = run_cli(models_home, "predict", "mixed", "--input", str(source), "--output",
                   str(tmp_path / "predict.parquet"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    predicted = pq.read_table(tmp_path / "predict.parquet")
    names = predicted.column_names
    assert served["label"] == predicted.column("label").to_pylist()
    for name in names[1:]:
        np.testing.assert_allclose(served[name], predicted.column(name).to_numpy(), rtol=1e-12)
    for chunk_rows in ("65536", "37"):  # one chunk; six, the last one short
        out = tmp_path / f"batch-{chunk_rows}.parquet"
        done = run_cli(models_home, "batch", "mixed", "--input", str(source), "--output",
                       str(out), "--keep", "id", "--chunk-rows", chunk_rows)  # fmt: skip
        assert done.returncode == 0, done.stderr
        batch = pq.read_table(out)
        assert batch.column_names == ["id", *names]
        assert batch.column("id").to_pylist() == rows.column("id").to_pylist()
        assert batch.column("label").to_pylist() == served["label"]
        for name in names[1:]:
            if chunk_rows == "65536":
                assert batch.column(name).to_pylist() == served[name], name
            else:
                np.testing.assert_allclose(batch.column(name).to_numpy(), served[name], rtol=1e-12)


def _tensor(name: str, column: pa.ChunkedArray) -> dict[str, Any]:
    values = column.to_pylist()
    kind = column.type
    if pa.types.is_string(kind):
        return {"name": name, "shape": [len(values)], "datatype": "BYTES", "data": values}
    if pa.types.is_boolean(kind):
        return {"name": name, "shape": [len(values)], "datatype": "BOOL", "data": values}
    data = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]
    return {"name": name, "shape": [len(values)], "datatype": "FP64",
            "data": [float("nan") if v is None else v for v in data]}  # fmt: skip


@pytest.mark.parametrize(
    ("fmt_in", "fmt_out"), [("csv", "jsonl"), ("jsonl", "csv"), ("parquet", "csv")]
)
def test_a_folder_of_parts_keeps_row_order_in_any_format(
    models_home: Path, tmp_path: Path, fmt_in: str, fmt_out: str
) -> None:
    rows = rows_with_id(250)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (lo, hi) in enumerate([(0, 90), (90, 91), (91, 250)]):
        _write(rows.slice(lo, hi - lo), folder / f"part-{i}.{fmt_in}")
    out = tmp_path / f"scores.{fmt_out}"
    with Registry(Settings(home=models_home)) as reg:
        result = run_batch("mixed", BatchOptions([folder], out, keep=["id"], chunk_rows=40),
                           registry=reg)  # fmt: skip
        expected = tandem.load("mixed", registry=reg).predict(rows)
    assert (result.rows_in, result.rows_out, result.rejected) == (250, 250, 0)
    assert result.chunks == 3 + 1 + 4  # chunks never span files: 90 -> 3, 1 -> 1, 159 -> 4
    got = _read(out)
    assert got.column("id").to_pylist() == list(range(1000, 1250))
    np.testing.assert_allclose(got.column("proba_yes").to_numpy(), expected.column("proba_yes").to_numpy(), rtol=1e-12)  # fmt: skip
    assert got.column("label").to_pylist() == expected.column("label").to_pylist()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "work folder left behind"


def _write(table: pa.Table, path: Path) -> None:
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))


def _read(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix == ".csv":
        return pacsv.read_csv(path)
    import pyarrow.json as pajson

    return pajson.read_json(path)


def test_the_checks_before_any_work_name_what_is_wrong(models_home: Path, tmp_path: Path) -> None:
    rows = rows_with_id(50)
    good = tmp_path / "good.parquet"
    pq.write_table(rows, good)
    lacking = tmp_path / "lacking.parquet"
    pq.write_table(rows.drop(["city"]), lacking)
    as_text = tmp_path / "text.parquet"
    pq.write_table(rows.set_column(0, "x1", rows.column("x1").cast(pa.string())), as_text)
    out = tmp_path / "out.parquet"
    cases = [
        (["--input", str(good), "--input", str(lacking)], "lacks column(s) ['city']"),
        (["--input", str(as_text)], "column 'x1' is of type string, but the model needs numbers"),
        (["--input", str(good), "--keep", "nope"], "--keep names column(s) ['nope']"),
        (["--input", str(good), "--keep", "label"], "would collide with the prediction column"),
        (["--input", str(good), "--on-error", "ignore"], "--on-error must be one of"),
        (["--input", str(good), "--format", "csv"], "contradicts the --output suffix"),
        (["--input", str(tmp_path / "missing.csv")], "does not exist"),
        (["--input", str(good), "--engine", "spark"], "--engine must be one of"),
    ]
    for args, message in cases:
        done = run_cli(models_home, "batch", "mixed", *args, "--output", str(out))
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == [
            "good.parquet",
            "lacking.parquet",
            "text.parquet",
        ]


def bad_csv(path: Path) -> pa.Table:
    """A CSV of 120 rows where rows 7 and 93 hold text in a numeric column (row 50 has a
    missing value, which is fine)."""
    rows = rows_with_id(120)
    x1 = [str(v) for v in rows.column("x1").to_pylist()]
    x1[7], x1[50], x1[93] = "seven", "", "1.2.3"
    table = rows.set_column(0, "x1", pa.array(x1))
    pacsv.write_csv(table, path)
    return rows


def test_bad_rows_fail_the_job_naming_the_first(models_home: Path, tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    bad_csv(source)
    with Registry(Settings(home=models_home)) as reg, pytest.raises(DataError) as caught:
        run_batch(
            "mixed", BatchOptions([source], tmp_path / "out.parquet", chunk_rows=50), registry=reg
        )
    message = str(caught.value)
    assert "row 7 of the job" in message and "'seven'" in message and "column 'x1'" in message
    assert "--on-error skip" in message
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("policy", ["skip", "null"])
def test_bad_rows_are_set_aside_in_a_rejects_file(
    models_home: Path, tmp_path: Path, policy: str
) -> None:
    source = tmp_path / "rows.csv"
    rows = bad_csv(source)
    out = tmp_path / "out.parquet"
    done = run_cli(models_home, "batch", "mixed", "--input", str(source), "--output", str(out),
                   "--keep", "id", "--on-error", policy, "--chunk-rows", "50")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 rejected row(s) listed in" in " ".join(done.stdout.split())
    rejects = pq.read_table(tmp_path / "out.rejects.parquet").to_pylist()
    assert [(r["row"], r["file_row"], r["column"], r["value"]) for r in rejects] == [
        (7, 7, "x1", "seven"),
        (93, 93, "x1", "1.2.3"),
    ]
    assert all("needs a number" in r["reason"] and r["file"] == str(source) for r in rejects)
    got = pq.read_table(out)
    ids = rows.column("id").to_pylist()
    if policy == "skip":
        assert got.column("id").to_pylist() == [i for k, i in enumerate(ids) if k not in (7, 93)]
        assert got.column("label").null_count == 0
    else:
        assert got.column("id").to_pylist() == ids
        labels = got.column("label").to_pylist()
        assert [k for k, v in enumerate(labels) if v is None] == [7, 93]
        assert got.column("proba_yes").null_count == 2


def test_jsonl_lines_that_are_not_rows_are_rejected_one_by_one(
    models_home: Path, tmp_path: Path
) -> None:
    rows = rows_with_id(30).to_pylist()
    lines = [json.dumps(r) for r in rows]
    lines[4] = "{not json"
    lines[11] = "[1, 2, 3]"
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    with Registry(Settings(home=models_home)) as reg:
        result = run_batch(
            "mixed", BatchOptions([source], out, keep=["id"], on_error="skip"), registry=reg
        )
    assert (result.rows_in, result.rows_out, result.rejected) == (30, 28, 2)
    rejected = [
        json.loads(line) for line in (tmp_path / "out.rejects.jsonl").read_text().splitlines()
    ]
    assert [r["row"] for r in rejected] == [4, 11]
    assert "not valid JSON" in rejected[0]["reason"] and "not an object" in rejected[1]["reason"]
    kept = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert kept == [r["id"] for k, r in enumerate(rows) if k not in (4, 11)]


def test_an_existing_output_is_kept_unless_overwrite(models_home: Path, tmp_path: Path) -> None:
    source = tmp_path / "rows.parquet"
    pq.write_table(rows_with_id(20), source)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"precious")
    done = run_cli(models_home, "batch", "mixed", "--input", str(source), "--output", str(out))
    assert done.returncode == 2 and "already exists" in done.stderr and "--overwrite" in done.stderr
    assert out.read_bytes() == b"precious"
    done = run_cli(
        models_home, "batch", "mixed", "--input", str(source), "--output", str(out), "--overwrite"
    )
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).num_rows == 20


def test_the_closing_table_and_the_job_record(models_home: Path, tmp_path: Path) -> None:
    source = tmp_path / "rows.parquet"
    pq.write_table(rows_with_id(500), source)
    out = tmp_path / "out.parquet"
    done = run_cli(models_home, "batch", "mixed", "--input", str(source), "--output", str(out))
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for heading in ("rows", "seconds", "rows/s", "CPU seconds", "peak memory", "rejected"):
        assert heading in text
    assert "500" in text and "wrote 500 rows to" in text
    done = run_cli(models_home, "batch", "mixed", "--input", str(source), "--output",
                   str(tmp_path / "again.csv"), "--json")  # fmt: skip
    report = json.loads(done.stdout)
    assert report["rows_in"] == 500 and report["model"] == "mixed:1" and report["cpu_seconds"] > 0
    with Registry(Settings(home=models_home)) as reg:
        runs = reg.runs("mixed", 1, phase="batch")
    assert [r.rows for r in runs] == [500, 500]
    assert runs[1].details["output"] == str(tmp_path / "again.csv")
    assert runs[1].wall_seconds > 0 and runs[1].peak_rss_mb > 0


def test_memory_stays_bounded_whatever_the_file_size(models_home: Path, tmp_path: Path) -> None:
    """Peak RSS does not grow with the file: 3,000,000 rows (144 MB of float64 features) peak
    where 1,500,000 rows do, both in 20,000-row chunks; held whole, the larger file would add
    72 MB at least. (Above a 1,000-row file, a fixed ~60 MB: the reader's buffers, the
    threads' allocator heaps, and the chunks in flight.)"""
    table = numeric_table(3_000_000, seed=3).drop(["y"])
    sizes = {"small": 1000, "half": 1_500_000, "whole": 3_000_000}
    peaks = {}
    for name, n in sizes.items():
        source = tmp_path / f"{name}.parquet"
        pq.write_table(table.slice(0, n), source, row_group_size=100_000)
        done = run_cli(models_home, "batch", "num", "--input", str(source), "--output",
                       str(tmp_path / f"{name}.out.parquet"), "--chunk-rows", "20000", "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        peaks[name] = json.loads(done.stdout)["peak_rss_mb"]
    assert peaks["whole"] < peaks["half"] + 25, peaks
    assert peaks["whole"] < peaks["small"] + 120, peaks


def test_usage_errors_before_work_leave_no_job_behind(models_home: Path, tmp_path: Path) -> None:
    source = tmp_path / "rows.parquet"
    pq.write_table(rows_with_id(20), source)
    with Registry(Settings(home=models_home)) as reg:
        with pytest.raises(SchemaError):
            run_batch("num", BatchOptions([source], tmp_path / "o.parquet"), registry=reg)
        with pytest.raises(UsageError, match="contradict"):
            run_batch(
                "mixed",
                BatchOptions([source], tmp_path / "o.parquet", resume=True, overwrite=True),
                registry=reg,
            )
        assert reg.runs("mixed", phase="batch") == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["rows.parquet"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_progress_reports_rows_and_the_share_read(
    models_home: Path, tmp_path: Path, fmt: str
) -> None:
    """What the bar shows: rows so far (for rows/s) and the share of the input read (for the
    time left), rising to the whole input; rows known up front for Parquet only."""
    rows = rows_with_id(1000)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        _write(rows.slice(500 * i, 500), folder / f"part-{i}.{fmt}")
    events: list[Any] = []
    with Registry(Settings(home=models_home)) as reg:
        run_batch("mixed", BatchOptions([folder], tmp_path / "out.parquet", chunk_rows=100),
                  registry=reg, on_progress=events.append)  # fmt: skip
    assert [e.rows for e in events] == list(range(100, 1001, 100))
    assert [e.new for e in events] == [e.rows for e in events]
    shares = [e.done for e in events]
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0)
    assert 0.4 < shares[4] <= 0.6  # the first file of two equal ones read
    assert {e.total_rows for e in events} == ({1000} if fmt == "parquet" else {None})
