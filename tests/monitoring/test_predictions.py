"""The prediction log: a real server logs what it answered, off the request path; the rows
come back from the Parquet files exactly as the model saw and answered them."""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem import Settings
from tandem.errors import ConfigError, DataError
from tandem.monitoring.predictions import (
    REQUEST_ID,
    ROW,
    SOURCE,
    TIME,
    VERSION,
    Layout,
    LogOptions,
    PredictionLog,
    log_folder,
    read_log,
)
from tests.helpers import mixed_table
from tests.serving.conftest import running_server


def post(
    url: str, body: dict[str, object], headers: dict[str, str] | None = None
) -> tuple[dict, dict]:  # type: ignore[type-arg]
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read()), dict(r.headers)


def rows(table: pa.Table, lo: int, hi: int) -> list[dict[str, object]]:
    return table.slice(lo, hi - lo).drop_columns(["target"]).to_pylist()


def test_the_server_logs_inputs_outputs_and_request_ids(models_home: Path) -> None:
    data = mixed_table(60, seed=5)
    answers: dict[str, list[object]] = {}
    with running_server(["mixed"], models_home, log=LogOptions(flush_s=0.2)) as srv:
        for i in range(10):  # ten requests of six rows, one with the client's own id
            headers = {"x-request-id": "client-7"} if i == 7 else {}
            out, got = post(
                f"{srv.url}/invocations",
                {"dataframe_records": rows(data, 6 * i, 6 * i + 6)},
                headers,
            )
            rid = got["x-request-id"]
            assert (rid == "client-7") == (i == 7)
            answers[rid] = [p["label"] for p in out["predictions"]]
    # the server has stopped: everything it answered is on disk
    log = read_log("mixed", settings=Settings(home=models_home))
    assert log.num_rows == 60
    assert set(log.column(REQUEST_ID).to_pylist()) == set(answers)
    assert set(log.column(VERSION).to_pylist()) == {1} and set(log.column(SOURCE).to_pylist()) == {
        "serve"
    }
    for rid, labels in answers.items():
        mine = log.filter(pa.compute.equal(log.column(REQUEST_ID), rid)).sort_by(ROW)
        assert mine.column(ROW).to_pylist() == list(range(6))
        assert mine.column("__label").to_pylist() == labels
    # inputs as the model saw them: numbers as float (missing as NaN), categories as text
    by_x1 = {round(r["x1"], 12): r for r in log.to_pylist()}
    for original in data.to_pylist():
        logged = by_x1[round(original["x1"], 12)]
        assert logged["city"] == original["city"] and logged["rooms"] == str(
            original["rooms"]
        )  # a category
        assert (np.isnan(logged["x2"]) and np.isnan(original["x2"])) or logged["x2"] == original[
            "x2"
        ]
        assert logged["garden"] == float(original["garden"])
    # the probabilities are those a direct prediction gives
    direct = __import__("tandem").load("mixed:1").predict(data.drop_columns(["target"]))
    logged_p = {round(r["x1"], 12): r["__proba_yes"] for r in log.to_pylist()}
    for x1, p in zip(
        data.column("x1").to_pylist(), direct.column("proba_yes").to_pylist(), strict=True
    ):
        assert logged_p[round(x1, 12)] == pytest.approx(p, abs=1e-12)
    # one Hive partition per UTC day, compacted into Parquet by the reader, no temp files left
    root = log_folder("mixed", Settings(home=models_home))
    assert [p.name for p in root.iterdir()] == [f"date={datetime.now(UTC):%Y-%m-%d}"]
    files = sorted(p.name for p in root.rglob("*") if p.is_file() and p.name != ".compact.lock")
    assert len(files) == 1 and files[0].endswith(".parquet")


def test_requests_batched_together_are_each_logged_whole(models_home: Path, tmp_path: Path) -> None:
    """The server logs a batch at a time; concurrent requests that shared batches come back
    each with its own rows and answers, at every sampling rate."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client.parser import text_string_to_metric_families

    data = mixed_table(480, seed=8)
    for sample in (1.0, 0.5):
        home = tmp_path / f"sample-{sample}"  # each run its own log
        shutil.copytree(models_home, home, ignore=shutil.ignore_patterns("predictions"))
        answers: dict[str, tuple[int, list[object]]] = {}
        with running_server(["mixed"], home, log=LogOptions(sample=sample, flush_s=0.2)) as srv:
            url = f"{srv.url}/invocations"
            bodies = [{"dataframe_records": rows(data, 4 * i, 4 * i + 4)} for i in range(120)]
            with ThreadPoolExecutor(12) as pool:
                for i, (out, got) in enumerate(pool.map(lambda b: post(url, b), bodies)):  # noqa: B023
                    answers[got["x-request-id"]] = (i, [p["label"] for p in out["predictions"]])
            with urllib.request.urlopen(f"{srv.url}/metrics", timeout=10) as r:
                metrics = r.read().decode()
        batches = next(
            s.value for f in text_string_to_metric_families(metrics) for s in f.samples
            if s.name == "tandem_batch_rows_count" and s.labels.get("model") == "mixed"
        )  # fmt: skip
        assert batches < 120  # requests did share batches
        log = read_log("mixed", settings=Settings(home=home))
        logged = set(log.column(REQUEST_ID).to_pylist())
        assert logged <= set(answers) and log.num_rows == 4 * len(logged)
        if sample == 1.0:
            assert logged == set(answers)
        else:
            assert 25 <= len(logged) <= 95  # Binomial(120, 0.5): mean 60, sd 5.5
        for rid in logged:
            mine = log.filter(pa.compute.equal(log.column(REQUEST_ID), rid)).sort_by(ROW)
            assert mine.column(ROW).to_pylist() == [0, 1, 2, 3]
            i, labels = answers[rid]
            assert mine.column("__label").to_pylist() == labels
            assert mine.column("x1").to_pylist() == data.column("x1").to_pylist()[4 * i : 4 * i + 4]


def test_sampling_and_off(models_home: Path) -> None:
    data = mixed_table(200, seed=6)
    with running_server(["mixed"], models_home, log=LogOptions(sample=0.25, flush_s=0.2)) as srv:
        for i in range(200):
            post(f"{srv.url}/invocations", {"dataframe_records": rows(data, i, i + 1)})
    logged = read_log("mixed", settings=Settings(home=models_home)).num_rows
    assert 20 <= logged <= 85  # Binomial(200, 0.25): mean 50, sd 6.1
    with running_server(["num"], models_home, log=LogOptions(sample=0)) as srv:
        post(f"{srv.url}/v2/models/num/infer", {"inputs": [
            {"name": f"f{k}", "shape": [1], "datatype": "FP64", "data": [0.5]} for k in range(6)]})  # fmt: skip
    with pytest.raises(DataError, match="no predictions of num are logged"):
        read_log("num", settings=Settings(home=models_home))


def test_time_window_and_days(tmp_path: Path) -> None:
    """Rows are read back by time window, and land in the partition of their UTC day."""
    home = Settings(home=tmp_path)
    layout = Layout("m", 3, ("a",), (), ("prediction",))
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)
    for k in range(5):
        plog.add(
            layout,
            f"r{k}",
            {"numeric": np.array([[float(k)]])},
            {"prediction": np.array([k * 2.0])},
            1,
        )
    plog.close()
    everything = read_log("m", settings=home)
    assert everything.column("a").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert everything.column("__prediction").to_pylist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    later = datetime.now(UTC) + timedelta(seconds=5)
    with pytest.raises(DataError, match="since"):
        read_log("m", since=later, settings=home)
    assert read_log("m", since=datetime.now(UTC) - timedelta(hours=1), settings=home).num_rows == 5
    assert everything.column(TIME).type == pa.timestamp("us", tz="UTC")


def test_bounded_memory_drops_and_counts(tmp_path: Path) -> None:
    home = Settings(home=tmp_path)
    layout = Layout("m", 1, ("a",), (), ("prediction",))
    plog = PredictionLog(
        "serve", LogOptions(flush_s=60, flush_rows=10, max_queued_rows=10), settings=home
    )
    for k in range(4):  # 4 rows each: the third and fourth requests do not fit
        plog.add(layout, f"r{k}", {"numeric": np.zeros((1, 4))}, {"prediction": np.zeros(4)}, 4)
    plog._take_deferred()  # as the serving thread does every few batches
    assert plog.dropped_rows == 8
    plog.close()
    assert plog.written_rows == 8 == read_log("m", settings=home).num_rows


def replay(
    requests: list[tuple[int, bool, bool]],
    send: Callable[[np.ndarray, np.ndarray, list[tuple[str, int, int]]], None],
) -> None:
    """Requests (rows, logged, ends its batch) gathered into batches as drawn: ``send`` gets
    each batch's request of each row, each row's position in its request, and (request id,
    first row, rows) of its logged requests."""
    batch: list[tuple[int, int, bool]] = []

    def flush() -> None:
        i_of = np.concatenate([np.full(n, i) for i, n, _ in batch])
        within = np.concatenate([np.arange(n) for _, n, _ in batch])
        starts = np.cumsum([0] + [n for _, n, _ in batch])
        send(i_of, within,
             [(f"r{i}", int(s), n) for (i, n, kept), s in zip(batch, starts, strict=False) if kept])  # fmt: skip
        batch.clear()

    for i, (n, logged, batch_ends) in enumerate(requests):
        batch.append((i, n, logged))
        if batch_ends:
            flush()
    if batch:
        flush()


#: requests as ``replay`` takes them: (rows, logged, ends its batch)
REQUESTS = st.lists(
    st.tuples(st.integers(min_value=1, max_value=7), st.booleans(), st.booleans()),
    min_size=1,
    max_size=14,
)


@settings(max_examples=25, deadline=None)
@given(REQUESTS)
def test_request_rows_keep_their_order(
    tmp_path_factory: pytest.TempPathFactory, requests: list[tuple[int, bool, bool]]
) -> None:
    """However requests of any sizes gather into batches, and whichever of a batch's requests
    are logged (sampling), each logged request's rows come back whole, each with its request
    and position, and no other rows do."""
    home = Settings(home=tmp_path_factory.mktemp("log"))
    layout = Layout("m", 1, ("a", "b"), ("c",), ("label",))
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)

    def send(i_of: np.ndarray, within: np.ndarray, answered: list[tuple[str, int, int]]) -> None:
        feed = {"numeric": np.vstack([i_of.astype(float), within.astype(float)]),
                "categorical": np.array([[f"c{i}" for i in i_of]], dtype=object)}  # fmt: skip
        plog.add_batch(layout, feed, {"label": i_of.copy()}, answered)

    replay(requests, send)
    plog.close()
    expected = {f"r{i}": n for i, (n, logged, _) in enumerate(requests) if logged}
    got = read_log("m", settings=home).to_pylist() if expected else []
    assert len(got) == sum(expected.values())
    for row in got:
        i = int(row["a"])
        assert row[REQUEST_ID] == f"r{i}" and row[ROW] == row["b"] and row["c"] == f"c{i}"
        assert row["__label"] == i and row[ROW] < expected[f"r{i}"]


def test_bad_options_and_reserved_names() -> None:
    with pytest.raises(ConfigError, match="between 0 .off. and 1"):
        LogOptions(sample=1.5)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="--log-flush-s"):
            LogOptions(flush_s=bad)
    with pytest.raises(ConfigError, match="--log-flush-rows"):
        LogOptions(flush_rows=0)
    with pytest.raises(ConfigError, match="dropped before a write is due"):
        LogOptions(flush_rows=100, max_queued_rows=99)
    from tandem.data.schema import ColumnSpec

    with pytest.raises(ConfigError, match="__time"):
        Layout.of("m", 1, [ColumnSpec(name="__time", kind="numeric")], ["prediction"])


def test_a_batch_job_logs_its_scored_rows(models_home: Path, tmp_path: Path) -> None:
    from tandem import Registry
    from tandem.batch import BatchOptions, run_batch

    data = mixed_table(300, seed=8).drop_columns(["target"])
    data = data.append_column("id", pa.array(np.arange(300)))
    x1 = data.column("x1").to_pylist()
    x1[7] = "seven"  # a row that cannot be scored: skipped, and not logged
    data = data.set_column(0, "x1", pa.array([str(v) for v in x1]))
    pa.csv.write_csv(data, tmp_path / "rows.csv")
    home = Settings(home=models_home)
    with Registry(home) as reg:
        run_batch("mixed", BatchOptions(inputs=[tmp_path / "rows.csv"], output=tmp_path / "out.parquet",
                  keep=["id"], on_error="skip", chunk_rows=64, log_sample=1.0), registry=reg)  # fmt: skip
    log = read_log("mixed", settings=home).sort_by(ROW)
    assert log.column(ROW).to_pylist() == [r for r in range(300) if r != 7]
    assert set(log.column(SOURCE).to_pylist()) == {"batch"}
    assert len(set(log.column(REQUEST_ID).to_pylist())) == 1
    out = pa.parquet.read_table(tmp_path / "out.parquet")
    assert log.column("__label").to_pylist() == out.column("label").to_pylist()
    assert log.column("__proba_yes").to_pylist() == out.column("proba_yes").to_pylist()
    assert log.column("x1").to_pylist()[:3] == [float(v) for v in x1[:3]]
    with Registry(home) as reg:  # the default keeps a 10 % sample
        run_batch("mixed", BatchOptions(inputs=[tmp_path / "rows.csv"], output=tmp_path / "o2.parquet",
                  on_error="skip"), registry=reg)  # fmt: skip
    assert 299 + 5 <= read_log("mixed", settings=home).num_rows <= 299 + 60


def test_the_open_inference_protocol_id_is_the_request_id(models_home: Path) -> None:
    from tests.serving.test_oip import post as oip_post

    body = {"id": "oip-42", "inputs": [
        {"name": f"f{k}", "shape": [2], "datatype": "FP64", "data": [0.5, -0.5]} for k in range(6)]}  # fmt: skip
    with running_server(["num"], models_home, log=LogOptions(flush_s=0.2)) as srv:
        status, answer, headers = oip_post(srv, "/v2/models/num/infer", body)
        assert status == 200 and answer["id"] == "oip-42" and headers["x-request-id"] == "oip-42"
        status, _, headers = oip_post(srv, "/v2/models/num/infer", body,
                                      {"content-type": "application/json", "x-request-id": "mine"})  # fmt: skip
        assert status == 200 and headers["x-request-id"] == "mine"  # the header wins
        status, answer, _ = oip_post(srv, "/v2/models/num/infer", body,
                                     {"content-type": "application/json", "x-request-id": "x" * 129})  # fmt: skip
        assert status == 400 and "X-Request-Id is 129 characters long" in answer["error"]
    log = read_log("num", settings=Settings(home=models_home))
    assert sorted(set(log.column(REQUEST_ID).to_pylist())) == ["mine", "oip-42"]
    assert log.num_rows == 4


def test_compaction_survives_a_crash_and_waits_its_turn(tmp_path: Path) -> None:
    """Hot files become one Parquet file; a crash between writing it and removing them
    duplicates nothing; a second compactor leaves the day to the first."""
    import fcntl
    import shutil

    from tandem.monitoring.predictions import HOT_SUFFIX, compact_log

    home = Settings(home=tmp_path)
    layout = Layout("m", 1, ("a",), (), ("prediction",))
    for k in range(3):  # three flushes, three hot files
        plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)
        plog.add(
            layout, f"r{k}", {"numeric": np.array([[float(k)]])}, {"prediction": np.array([0.0])}, 1
        )
        plog.close()
    (day,) = log_folder("m", home).iterdir()
    hot = sorted(day.glob(f"*{HOT_SUFFIX}"))
    assert len(hot) == 3
    saved = tmp_path / "saved"
    saved.mkdir()
    for f in hot:
        shutil.copy(f, saved / f.name)
    with open(day / ".compact.lock", "a") as held:  # another process is compacting
        fcntl.flock(held, fcntl.LOCK_EX)
        assert compact_log("m", home) == 0
        assert read_log("m", settings=home).column("a").to_pylist() == [0.0, 1.0, 2.0]
    assert compact_log("m", home) == 3
    assert not list(day.glob(f"*{HOT_SUFFIX}")) and len(list(day.glob("*.parquet"))) == 1
    for f in saved.iterdir():  # as if the process died before removing its sources
        shutil.copy(f, day / f.name)
    assert read_log("m", settings=home).column("a").to_pylist() == [0.0, 1.0, 2.0]
    assert not list(day.glob(f"*{HOT_SUFFIX}"))  # and the next compaction removed them


def test_feedback_by_a_key_column_and_bad_labels(models_home: Path, tmp_path: Path) -> None:
    from tandem import Registry
    from tandem.monitoring.feedback import add_labels, labelled

    data = mixed_table(40, seed=9)
    with running_server(["mixed"], models_home, log=LogOptions(flush_s=0.2)) as srv:
        for i in range(0, 40, 4):
            post(f"{srv.url}/invocations", {"dataframe_records": rows(data, i, i + 4)})
    home = Settings(home=models_home)
    labels = pa.table(
        {"x1": data.column("x1").slice(0, 25), "target": data.column("target").slice(0, 25)}
    )
    labels = pa.concat_tables([labels, pa.table({"x1": [123.0], "target": ["yes"]})])  # unknown
    pa.parquet.write_table(labels, tmp_path / "labels.parquet")
    with Registry(home) as reg:
        fed = add_labels(reg, "mixed", tmp_path / "labels.parquet", key="x1")
        assert (fed.received, fed.matched_rows, fed.unmatched) == (26, 25, 1)
        joined = labelled(read_log("mixed", settings=home), "mixed", home)
        assert joined is not None and joined.num_rows == 25
        truth = dict(
            zip(data.column("x1").to_pylist(), data.column("target").to_pylist(), strict=True)
        )
        assert all(truth[r["x1"]] == r["__true"] for r in joined.to_pylist())
        pa.parquet.write_table(
            pa.table({"x1": [0.5], "target": ["maybe"]}), tmp_path / "bad.parquet"
        )
        with pytest.raises(
            DataError, match=r"\['maybe'\] that are not classes of the model \['no', 'yes'\]"
        ):
            add_labels(reg, "mixed", tmp_path / "bad.parquet", key="x1")
        pa.parquet.write_table(pa.table({"x1": [0.5], "target": ["yes"]}), tmp_path / "one.parquet")
        with pytest.raises(DataError, match="no column 'city_id' to join on"):
            add_labels(reg, "mixed", tmp_path / "one.parquet", key="city_id")
        with pytest.raises(DataError, match="no 'request_id' column"):
            add_labels(reg, "mixed", tmp_path / "one.parquet")


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as out:
        out.write_table(table)
    return sink.getvalue().to_pybytes()


def test_direct_and_buffered_hot_files_are_the_same_file(tmp_path: Path) -> None:
    """The writer's direct writes (past the page cache, in whole 4 KiB blocks from its own
    buffer, grown as tables grow) give byte for byte the Arrow file a buffered write gives."""
    import sys

    from tandem.monitoring.predictions import HotFiles

    direct, buffered = HotFiles(), HotFiles(direct=False)
    rng = np.random.default_rng(0)
    for n in (1, 1_000, 60_000, 7):  # the third outgrows the first buffer; the last, after it
        table = pa.table({"x": rng.normal(size=n), "s": [f"r{k}" for k in range(n)]})
        a, b = tmp_path / f"direct-{n}.arrow", tmp_path / f"buffered-{n}.arrow"
        direct.write(a, table)
        buffered.write(b, table)
        assert a.read_bytes() == b.read_bytes() == _ipc_bytes(table)
        assert len(_ipc_bytes(table)) % HotFiles.ALIGN  # a part block, cut to length
    if sys.platform == "linux":  # ext4 and tmpfs take direct writes: they were used
        assert direct.direct
    with pytest.raises(FileExistsError):  # never over another file
        direct.write(a, table)


def test_a_file_system_refusing_direct_writes_gets_buffered_ones(tmp_path: Path) -> None:
    """When the kernel refuses a direct write (here: lengths it cannot take directly), the
    file is written through the page cache instead, whole, and so are the next ones."""
    from tandem.monitoring.predictions import HotFiles

    class Unaligned(HotFiles):
        ALIGN = 1  # whole files of any length: the kernel wants blocks (EINVAL)

    files = Unaligned()
    table = pa.table({"x": np.arange(3.0)})
    assert len(_ipc_bytes(table)) % 512
    for k in range(2):
        files.write(tmp_path / f"{k}.arrow", table)
        assert (tmp_path / f"{k}.arrow").read_bytes() == _ipc_bytes(table)
    assert not files.direct
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.arrow", "1.arrow"]


def test_the_reserved_columns_are_written_once_a_request(tmp_path: Path) -> None:
    """A served request's id, time, version and source are written once (run-end encoded),
    not once a row; readers get one value a row, of the plain types."""
    from tandem.monitoring.predictions import HOT_SUFFIX

    home = Settings(home=tmp_path)
    layout = Layout("m", 4, ("a",), (), ("prediction",))
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)
    for k in range(3):
        n = 32 + k
        plog.add(
            layout, f"r{k}", {"numeric": np.full((1, n), k, float)}, {"prediction": np.zeros(n)}, n
        )
    plog.close()
    (hot,) = log_folder("m", home).glob(f"*/*{HOT_SUFFIX}")
    with pa.memory_map(str(hot)) as source:
        schema = pa.ipc.open_file(source).schema
    for name in (REQUEST_ID, TIME, VERSION, SOURCE):
        assert pa.types.is_run_end_encoded(schema.field(name).type), name
    got = read_log("m", settings=home)
    assert got.schema.field(REQUEST_ID).type == pa.string() == got.schema.field(SOURCE).type
    assert got.schema.field(TIME).type == pa.timestamp("us", tz="UTC")
    assert got.schema.field(VERSION).type == pa.int32()
    ids = got.column(REQUEST_ID).to_pylist()
    assert ids == ["r0"] * 32 + ["r1"] * 33 + ["r2"] * 34
    assert got.column(ROW).to_pylist() == [*range(32), *range(33), *range(34)]
    assert set(got.column(SOURCE).to_pylist()) == {"serve"} and set(
        got.column(VERSION).to_pylist()
    ) == {4}
    assert [float(a) for a in got.column("a").to_pylist()] == [0.0] * 32 + [1.0] * 33 + [2.0] * 34


def test_a_write_across_midnight_splits_by_day(tmp_path: Path) -> None:
    """Rows whose times fall on two UTC days land in two day partitions, and read back whole."""
    home = Settings(home=tmp_path)
    layout = Layout("m", 1, ("a",), (), ())
    midnight = datetime(2026, 11, 23, tzinfo=UTC)
    times = [midnight - timedelta(seconds=1), midnight + timedelta(seconds=1)]
    ends = pa.array(np.array([2, 5], dtype=np.int32))
    table = pa.table(
        {
            REQUEST_ID: pa.RunEndEncodedArray.from_arrays(ends, pa.array(["late", "early"])),
            ROW: pa.array(np.array([0, 1, 0, 1, 2], dtype=np.int32)),
            TIME: pa.RunEndEncodedArray.from_arrays(
                ends, pa.array(times, pa.timestamp("us", tz="UTC"))
            ),
            "a": np.arange(5.0),
        }
    )
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)
    plog.add_table(layout, table)
    plog.close()
    days = sorted(p.name for p in log_folder("m", home).iterdir())
    assert days == ["date=2026-11-22", "date=2026-11-23"]
    got = read_log("m", settings=home)
    assert got.column(REQUEST_ID).to_pylist() == ["late", "late", "early", "early", "early"]
    assert got.column("a").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    after = read_log("m", since=midnight, settings=home)
    assert after.column(ROW).to_pylist() == [0, 1, 2]


@settings(max_examples=40, deadline=None)
@given(REQUESTS, st.sampled_from(["int", "text", "float"]))
def test_numeric_batches_kept_as_bytes_come_back_whole(
    tmp_path_factory: pytest.TempPathFactory,
    requests: list[tuple[int, bool, bool]],
    label_kind: str,
) -> None:
    """A model of numbers has its whole batches kept as bytes (a record a batch size), and
    the logged requests of partly logged ones copied out as bytes; either way each logged
    request's rows come back whole, with their request, position, inputs and outputs."""
    home = Settings(home=tmp_path_factory.mktemp("log"))
    layout = Layout("m", 1, ("a", "b", "c"), (), ("label", "proba"))
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)
    prefix: list[bool] = []

    def label(i: np.ndarray) -> np.ndarray:
        if label_kind == "text":
            return np.asarray([f"class-{k}" for k in i])  # fixed-width text, not objects
        return i.astype(np.int64 if label_kind == "int" else np.float32)

    def send(i_of: np.ndarray, within: np.ndarray, answered: list[tuple[str, int, int]]) -> None:
        kept = [(s, n) for _, s, n in answered]
        # the logged rows start the batch, one after the other: they can be kept as bytes
        prefix.append(bool(kept) and kept[0][0] == 0 and all(
            b[0] == a[0] + a[1] for a, b in pairwise(kept)
        ))  # fmt: skip
        raw = np.stack([i_of / 10, within / 10], axis=1)  # outputs: views of one matrix
        feed = {"numeric": np.vstack([i_of, within, -i_of]).astype(float)}
        plog.add_batch(layout, feed, {"label": label(i_of), "proba": raw[:, 0]}, answered)

    replay(requests, send)
    plog.flush()
    records = plog._records.get(layout)
    plog.close()
    expected = {f"r{i}": n for i, (n, logged, _) in enumerate(requests) if logged}
    if any(prefix):
        assert records is not None  # numbers, fixed-width text: as bytes
    got = read_log("m", settings=home).to_pylist() if expected else []
    assert len(got) == sum(expected.values())
    for row in got:
        i = int(row["a"])
        assert row[REQUEST_ID] == f"r{i}" and row[ROW] == row["b"] < expected[f"r{i}"]
        assert row["c"] == -i and row["__proba"] == pytest.approx(i / 10)
        assert row["__label"] == (f"class-{i}" if label_kind == "text" else i)


def test_batches_kept_as_bytes_across_several_buffers(tmp_path: Path) -> None:
    """Enough 32-row batches to fill several of the log's byte buffers (64 KiB each)
    come back whole and in order, however many buffers they took; and so do the next
    ones, written over the same buffers once the writer has read them."""
    from tandem.monitoring import predictions

    home = Settings(home=tmp_path)
    layout = Layout("m", 2, tuple(f"x{k}" for k in range(32)), (), ("label", "p"))
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)
    per_round = 3 * predictions._CHUNK // (34 * 8 * 32) + 5  # a batch: 32 rows of 34 numbers
    batches = 2 * per_round
    for b in range(batches):
        feed = {"numeric": np.arange(32 * 32, dtype=float).reshape(32, 32) + b * 10_000}
        raw = np.stack([np.full(32, b), np.arange(32.0)], axis=1)
        plog.add_batch(layout, feed, {"label": raw[:, 0].astype(np.int64), "p": raw[:, 1]},
                       [(f"r{b}", 0, 32)])  # fmt: skip
        if b == per_round - 1:
            plog._take_deferred()
            records = plog._records[layout]
            assert records is not None and len(records.by_rows[32].chunks) >= 3
            used = {id(c) for c in records.by_rows[32].chunks}
            plog.flush()
    assert used & {id(c) for c in records.by_rows[32].chunks}  # the same buffers, again
    plog.close()
    got = read_log("m", settings=home)
    assert got.num_rows == 32 * batches
    ids = got.column(REQUEST_ID).to_pylist()
    assert ids == [f"r{b}" for b in range(batches) for _ in range(32)]
    x5 = np.asarray(got.column("x5"))  # feature 5 of row j in batch b: 5 * 32 + j + b * 10_000
    b_of, j = np.repeat(np.arange(batches), 32), np.tile(np.arange(32), batches)
    np.testing.assert_array_equal(x5, 5 * 32 + j + b_of * 10_000)
    np.testing.assert_array_equal(np.asarray(got.column("__label")), b_of)
    np.testing.assert_array_equal(np.asarray(got.column("__p")), j)


def test_the_logs_buffers_follow_its_traffic_not_its_batch_sizes(tmp_path: Path) -> None:
    """One-row requests batched 1 to 64 at a time make a record (and a buffer) for every
    size; what the log holds for them is about one gather's worth of bytes, not a fixed
    buffer per size (at 1 MB buffers, 64 sizes held 160 MB), and it comes back down once
    the traffic does: the spare buffers are those the last few periods used."""
    from tandem.monitoring import predictions

    home = Settings(home=tmp_path)
    layout = Layout("m", 1, tuple(f"x{k}" for k in range(32)), (), ("label", "p"))
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)

    def held() -> tuple[int, int]:
        """Bytes in the log's record buffers (the records' and the spares), and spares."""
        chunks = _record_buffers(plog, layout)
        spares = sum(map(len, plog._spare.values()))
        return sum(len(c.getbuffer()) for c in chunks), spares

    def batch(rows: int, b: int) -> None:
        feed = {"numeric": np.full((32, rows), float(b))}
        outputs = {"label": np.arange(rows, dtype=np.int64), "p": np.linspace(0, 1, rows)}
        plog.add_batch(layout, feed, outputs, [(f"r{b}-{i}", i, 1) for i in range(rows)])

    for b in range(640):  # ten of every size, 1 to 64 rows
        batch(b % 64 + 1, b)
    plog.flush()
    for b in range(640):  # again: the buffers read are reused
        batch(b % 64 + 1, b)
    plog.flush()
    busy, spares = held()
    traffic = 640 * 32.5 * (32 + 2) * 8  # bytes a period: 5.7 MB
    assert busy <= 3 * traffic  # at 1 MB a buffer: 160 MB
    quiet_periods = predictions._SPARE_PERIODS + 1
    for b in range(quiet_periods):  # then the traffic drops to one size: the spares go too
        batch(1, b)
        plog.flush()
    quiet, spares = held()
    assert spares <= 2 and quiet < busy / 4
    plog.close()
    assert read_log("m", settings=home).num_rows == 2 * 10 * sum(range(1, 65)) + quiet_periods


def test_a_batch_larger_than_a_buffer_finds_room_made_for_it(tmp_path: Path) -> None:
    """A batch of more bytes than the log's buffers are made of goes to a buffer made (or
    grown) to hold it before it came, never one that must grow while the serving thread
    appends to it; and the batches come back whole."""
    from tandem.monitoring import predictions

    home = Settings(home=tmp_path)
    layout = Layout("m", 1, tuple(f"x{k}" for k in range(32)), (), ("label", "p"))
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)
    rows = 2 * predictions._CHUNK // (34 * 8) + 1  # a batch: a bit over two buffers' worth
    for b in range(6):
        feed = {"numeric": np.full((32, rows), float(b))}
        outputs = {"label": np.full(rows, b, dtype=np.int64), "p": np.linspace(0, 1, rows)}
        plog.add_batch(layout, feed, outputs, [(f"r{b}", 0, rows)])
        plog._take_deferred()
        records = plog._records[layout]
        assert records is not None
        record = records.by_rows[rows]
        nxt = record.chunks[-1]  # where the next batch goes
        with nxt.getbuffer() as view:
            assert len(view) - nxt.tell() >= record.size
        if b == 2:
            plog.flush()  # the buffers read come back as spares, and are used again
    plog.close()
    got = read_log("m", settings=home)
    assert got.num_rows == 6 * rows
    np.testing.assert_array_equal(np.asarray(got.column("__label")), np.repeat(np.arange(6), rows))
    np.testing.assert_array_equal(np.asarray(got.column("x7")), np.repeat(np.arange(6.0), rows))


def test_steady_traffic_fills_few_large_buffers_and_no_larger_than_the_cap(
    tmp_path: Path,
) -> None:
    """Batches of one size, many between gathers, go to buffers that double (up to
    _CHUNK_MAX), not to one buffer a batch (each costs the serving thread a switch and the
    writer a read of every column); and every row comes back."""
    from tandem.monitoring import predictions

    home = Settings(home=tmp_path)
    layout = Layout("m", 1, tuple(f"x{k}" for k in range(32)), (), ("label", "p"))
    plog = PredictionLog(
        "serve", LogOptions(flush_s=60, flush_rows=10**7, max_queued_rows=10**7), settings=home
    )
    rows = 128  # 34.8 kB a batch: one a 64 KiB buffer
    batches = 500
    for b in range(batches):
        feed = {"numeric": np.full((32, rows), float(b))}
        outputs = {"label": np.full(rows, b, dtype=np.int64), "p": np.linspace(0, 1, rows)}
        plog.add_batch(layout, feed, outputs, [(f"r{b}", 0, rows)])
    records = plog._records[layout]
    assert records is not None
    chunks = records.by_rows[rows].chunks
    sizes = [len(c.getbuffer()) for c in chunks]
    assert len(chunks) <= 16, sizes  # one a batch: 500
    assert max(sizes) <= predictions._CHUNK_MAX
    plog.close()
    got = read_log("m", settings=home)
    assert got.num_rows == batches * rows
    np.testing.assert_array_equal(
        np.asarray(got.column("x5")), np.repeat(np.arange(float(batches)), rows)
    )


def test_rows_that_come_while_a_full_log_writes_wait_for_the_next_write(tmp_path: Path) -> None:
    """Traffic during a write (the rows being written still count as waiting) must not make
    the writer write again at once, a file of the few rows that came meanwhile: they wait
    until enough do, or the flush interval passes."""
    from tandem.monitoring.predictions import GATHER_S, HOT_SUFFIX

    home = Settings(home=tmp_path)
    layout = Layout("m", 1, ("x",), (), ("label",))
    plog = PredictionLog("serve", LogOptions(flush_s=60, flush_rows=1000), settings=home)
    plog.started.wait(30)

    def batch(rows: int, tag: str) -> None:
        feed = {"numeric": np.ones((1, rows))}
        outputs = {"label": np.zeros(rows, dtype=np.int64)}
        plog.add_batch(layout, feed, outputs, [(tag, 0, rows)])

    write = plog._files.write
    during = []

    def write_under_traffic(path: Path, table: pa.Table) -> None:
        if not during:  # the first write: a request answered while it runs
            during.append(path)
            batch(3, "during")
        write(path, table)

    plog._files.write = write_under_traffic  # type: ignore[method-assign]
    batch(1000, "full")  # wakes the writer: the log is full
    deadline = time.monotonic() + 10
    while not during and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(2.5 * GATHER_S)  # the writer's next wakes: gathers, not writes
    files = list(log_folder("m", home).glob(f"*/*{HOT_SUFFIX}"))
    assert len(files) == 1, [f.name for f in files]
    plog.close()  # then the three rows are written
    assert read_log("m", settings=home).num_rows == 1003


def _record_buffers(plog: PredictionLog, layout: Layout) -> list[io.BytesIO]:
    """Every bytes buffer the log holds for ``layout``'s records: the spares and the
    records' own."""
    chunks = [c for pool in plog._spare.values() for c in pool]
    records = plog._records.get(layout)
    if records is not None:
        chunks += [c for r in records.by_rows.values() for c in r.chunks]
    return chunks


def _stop_writer(plog: PredictionLog) -> None:
    """Stop ``plog``'s writer thread, so that a test takes the writer's steps itself (its
    gathers and writes); ``flush`` and ``close`` still write what waits."""
    plog._closing = True
    plog._wake.set()
    plog._thread.join()


def test_steady_writes_of_about_one_size_take_no_new_buffers(tmp_path: Path) -> None:
    """A server's log takes its writer's memory once: the column buffers are made for a
    write's rows and a quarter more, and the file buffer for its first file and a quarter
    more, so a later write a few rows larger (the rows that came while the writer woke)
    maps no fresh pages (a growth is a copy and page faults, on the serving core; measured
    at 32-row requests, 0.1-0.2 s of CPU in a server's first seconds). The rows all come
    back."""
    home = Settings(home=tmp_path)
    layout = Layout("m", 1, tuple(f"x{k}" for k in range(32)), (), ("label",))
    flush_rows = 8192  # 2.2 MB a file: more than the file buffer's least size
    plog = PredictionLog("serve", LogOptions(flush_s=60, flush_rows=flush_rows), settings=home)
    _stop_writer(plog)
    buffers = []
    served = 0
    for extra in (0, 32, 96):  # the rows a write holds beyond flush_rows
        for _ in range((flush_rows + extra) // 32):
            feed = {"numeric": np.full((32, 32), float(served))}
            outputs = {"label": np.full(32, served, dtype=np.int64)}
            plog.add_batch(layout, feed, outputs, [(f"r{served}", 0, 32)])
            served += 1
        plog.flush()
        columns = plog._gathered[layout].columns
        buffers.append(({k: id(v) for k, v in columns.items()}, id(plog._files._buffer)))
    assert buffers[0] == buffers[1] == buffers[2], "a write of a few more rows grew a buffer"
    got = read_log("m", settings=home)
    assert got.num_rows == served * 32
    np.testing.assert_array_equal(
        np.asarray(got.column("x3")), np.repeat(np.arange(float(served)), 32)
    )


def test_steady_traffic_of_many_batch_sizes_makes_no_new_buffers(tmp_path: Path) -> None:
    """32-row requests batched one to eight together make eight batch sizes, each with its
    buffers doubling through a gather period; once the traffic is steady, every buffer the
    serving thread appends to is one the writer read before, neither made nor grown (fresh
    pages, faulted in on the serving thread), also across the early gathers a write calls
    for, which read fewer; and every row comes back."""
    home = Settings(home=tmp_path)
    layout = Layout("m", 1, tuple(f"x{k}" for k in range(32)), (), ("label",))
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)
    _stop_writer(plog)
    every: list[io.BytesIO] = []  # held, so that no id is reused
    served = 0

    def period(batches: int) -> None:
        nonlocal served
        for b in range(batches):
            rows = 32 * (b % 8 + 1)
            feed = {"numeric": np.full((32, rows), float(b))}
            outputs = {"label": np.full(rows, b, dtype=np.int64)}
            plog.add_batch(layout, feed, outputs, [(f"r{served}", 0, rows)])
            served += rows
        with plog._writing:
            plog._gather()

    def buffers() -> set[tuple[int, int]]:
        """(identity, size) of every record buffer: the records' and the spares."""
        assert plog._records[layout] is not None
        chunks = _record_buffers(plog, layout)
        every.extend(chunks)
        return {(id(c), len(c.getbuffer())) for c in chunks}

    for _ in range(3):
        period(400)
    seen = buffers()
    for p in range(8):
        period(400 if p % 2 else 120)  # every other gather an early one
        assert buffers() <= seen, f"period {p}: buffers made or grown"
    plog.flush()
    assert read_log("m", settings=home).num_rows == served


def test_batches_held_for_a_later_append_are_neither_lost_nor_late(tmp_path: Path) -> None:
    """The log holds a few batches before it appends them (see add_batch): fewer than that
    are taken by the writer at its next gather, not left waiting for more traffic; each
    row keeps the time it was answered, not the time it was appended; and closing the log
    writes every one."""
    from tandem.monitoring.predictions import _DEFER, GATHER_S, TIME

    home = Settings(home=tmp_path)
    layout = Layout("m", 1, ("x",), (), ("label",))
    plog = PredictionLog("serve", LogOptions(flush_s=60), settings=home)
    plog.started.wait(30)

    def batch(b: int) -> None:
        feed = {"numeric": np.full((1, 2), float(b))}
        plog.add_batch(layout, feed, {"label": np.full(2, b)}, [(f"r{b}", 0, 2)])

    told = time.time()
    batch(0)
    time.sleep(0.3)
    for b in range(1, _DEFER - 2):
        batch(b)
    deadline = time.monotonic() + 10 * GATHER_S
    while plog._deferred and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not plog._deferred, "held batches waited for more traffic"
    batch(_DEFER)  # told just before the close
    plog.close()
    got = read_log("m", settings=home)
    assert got.column("__request_id").to_pylist() == [
        f"r{b}" for b in [*range(_DEFER - 2), _DEFER] for _ in range(2)
    ]
    seconds = pa.compute.cast(got.column(TIME), pa.int64()).to_numpy() / 1e6
    assert told - 0.05 <= seconds[0] <= told + 0.25  # its answer's time, 0.3 s before the rest
    assert seconds[2] - seconds[0] >= 0.29
