"""``tandem demo``: the model's life on real data, measured.

Daily weather (will it rain tomorrow?): train ``auto`` on the older years, register and
promote the winner, then predict the newer years from the registry, in bulk, row by row in
process, and over HTTP from a real ``tandem serve`` process, and put what training cost
beside what inference costs; then score the newer years again as a batch job over a
Parquet file (``tandem batch``); then close the loop: the days served over HTTP were logged,
their truth arrives (``tandem feedback``), ``tandem monitor`` finds the drift and the decay,
and ``tandem retrain --promote`` trains a challenger on them and promotes it only on evidence;
and end with ``tandem report``: the ledger's measured training-vs-inference table and the
lifetime projection, also written as an HTML page.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tandem.data.demo import rainfall
from tandem.inference import load
from tandem.ledger.cost import PriceTable
from tandem.ledger.meter import Meter, Profile, process_cpu_seconds
from tandem.ledger.report import Report, build_report
from tandem.monitoring.monitor import MonitorReport
from tandem.monitoring.retrain import RetrainResult
from tandem.registry import Registry
from tandem.training.train import ProgressEvent, TrainResult, train

__all__ = ["DemoResult", "run_demo"]

NAME = "rain"
TRAIN_SHARE = 2 / 3
SINGLE_ROW_CALLS = 500
#: the real-time stage: one-row requests from this many keep-alive clients
REALTIME_REQUESTS = 3000
REALTIME_CLIENTS = 8
#: the report's projection: a small production service
REQUESTS_PER_DAY = 100_000


@dataclass(frozen=True)
class RealtimeStats:
    requests: int
    clients: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    #: server CPU per request (None where /proc is not available)
    server_cpu_us: float | None
    #: answers whose label differs from the bulk prediction of the same row (should be 0)
    mismatches: int
    ready_s: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BatchStats:
    rows: int
    rows_per_s: float
    cpu_seconds: float
    peak_rss_mb: float
    #: rows whose label differs from the bulk prediction of the same row (should be 0)
    mismatches: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LoopStats:
    labelled: int
    monitor: MonitorReport
    retrain: RetrainResult

    def to_json(self) -> dict[str, Any]:
        return {
            "labelled": self.labelled,
            "monitor": self.monitor.to_json(),
            "retrain": self.retrain.to_json(),
        }


@dataclass(frozen=True)
class DemoResult:
    training: TrainResult
    inference_rows: int
    inference_accuracy: float
    #: accuracy of always predicting the older years' most frequent class on the later days
    majority_accuracy: float
    bulk: Profile
    single_row_p50_us: float
    single_row_p99_us: float
    single_row_cpu_us: float
    realtime: RealtimeStats
    batch: BatchStats
    loop: LoopStats
    report: Report

    def table(self) -> list[tuple[str, str, str]]:
        """The training-vs-inference rows: (what, training, inference)."""
        t = self.training.profile
        n_train = sum(self.training.rows.values())
        return [
            (
                "purpose",
                f"learn weights from {n_train:,} days",
                f"predict {self.inference_rows:,} later days",
            ),
            (
                "model",
                f"{self.training.family} (auto, {len(self.training.leaderboard)} candidates)",
                f"{self.training.version.ref} via ONNX Runtime",
            ),
            (
                "wall time",
                f"{t.wall_seconds:.2f} s",
                f"{self.bulk.wall_seconds * 1e3:.1f} ms for all rows",
            ),
            (
                "CPU seconds",
                f"{t.cpu_seconds:.2f} s",
                f"{self.bulk.cpu_seconds:.3f} s for all rows",
            ),
            (
                "per row",
                f"{t.cpu_seconds / n_train * 1e6:,.0f} µs CPU per training row",
                f"{self.bulk.cpu_seconds / self.inference_rows * 1e6:.2f} µs CPU (bulk)",
            ),
            (
                "latency",
                "-",
                f"single row p50 {self.single_row_p50_us:.0f} µs, p99 {self.single_row_p99_us:.0f} µs",
            ),
            (
                "real-time (HTTP)",
                "-",
                f"{self.realtime.requests:,} requests from {self.realtime.clients} clients: "
                f"{self.realtime.requests_per_s:,.0f} req/s, p50 {self.realtime.p50_ms:.2f} ms, "
                f"p99 {self.realtime.p99_ms:.2f} ms"
                + (
                    f", {self.realtime.server_cpu_us:.0f} µs server CPU per request"
                    if self.realtime.server_cpu_us is not None
                    else ""
                ),
            ),
            (
                "batch (file)",
                "-",
                f"tandem batch over {self.batch.rows:,} rows of Parquet: "
                f"{self.batch.rows_per_s:,.0f} rows/s, {self.batch.cpu_seconds:.2f} CPU s",
            ),
            ("peak memory", f"{t.peak_rss_mb:.0f} MB (process)", "same process"),
            (
                "quality",
                f"test accuracy {self.training.version.metrics.get('accuracy', float('nan')):.3f}",
                f"accuracy on later days {self.inference_accuracy:.3f} "
                f"(always the old majority class: {self.majority_accuracy:.3f})",
            ),
            ("how often", "once per (re)training", "every prediction"),
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.training.version.ref,
            "family": self.training.family,
            "leaderboard": [c.to_json() for c in self.training.leaderboard],
            "training": {**self.training.profile.to_json(), "rows": self.training.rows},
            "inference": {
                "rows": self.inference_rows,
                "accuracy": self.inference_accuracy,
                "majority_class_accuracy": self.majority_accuracy,
                "bulk": self.bulk.to_json(),
                "single_row_p50_us": self.single_row_p50_us,
                "single_row_p99_us": self.single_row_p99_us,
                "single_row_cpu_us": self.single_row_cpu_us,
                "realtime": self.realtime.to_json(),
                "batch": self.batch.to_json(),
            },
            "loop": self.loop.to_json(),
            "report": self.report.to_json(),
        }


def run_demo(
    *,
    registry: Registry | None = None,
    time_budget: float = 30.0,
    on_progress: Callable[[ProgressEvent], None] | None = None,
) -> DemoResult:
    """Train on the older two thirds of the weather data, predict the newer third."""
    table = rainfall()
    cut = int(table.num_rows * TRAIN_SHARE)
    older, newer = table.slice(0, cut), table.slice(cut)
    own = registry is None
    reg = registry or Registry()
    settings = reg.settings
    try:
        result = train(
            older,
            target="rain",
            name=NAME,
            ignore=["day"],
            time_budget=time_budget,
            on_progress=on_progress,
            registry=reg,
        )
        reg.set_alias(NAME, result.version.version, "champion")
        predictor = load(f"{NAME}@champion", registry=reg)
    finally:
        if own:
            reg.close()
    features = newer.drop_columns(["rain"])
    with Meter() as bulk_meter:
        out = predictor.predict(features)
    truth = np.asarray(newer.column("rain").to_numpy())
    accuracy = float(np.mean(out.column("label").to_numpy() == truth))
    # the later decades rain more often: a model can fall below this baseline as the data
    # drifts, which is what monitoring (next) is for
    old = np.asarray(older.column("rain").to_numpy())
    values, counts = np.unique(old, return_counts=True)
    majority = float(np.mean(truth == values[np.argmax(counts)]))
    rows = features.slice(0, SINGLE_ROW_CALLS).to_pylist()
    latencies = []
    with Meter() as single_meter:
        for row in rows:
            start = time.perf_counter()
            predictor.predict(row)
            latencies.append((time.perf_counter() - start) * 1e6)
    realtime = _realtime(
        settings.home, settings.registry, features, out.column("label").to_pylist()
    )
    batch = _batch(settings, newer.drop_columns(["rain"]), out.column("label").to_pylist())
    loop = _loop(settings, newer.slice(0, realtime.requests))
    with Registry(settings) as reg:
        report = build_report(reg, result.version.ref, PriceTable.load(settings=settings),
                              requests_per_day=REQUESTS_PER_DAY)  # fmt: skip
    return DemoResult(
        training=result,
        inference_rows=newer.num_rows,
        inference_accuracy=accuracy,
        majority_accuracy=majority,
        bulk=bulk_meter.profile,
        single_row_p50_us=statistics.median(latencies),
        single_row_p99_us=float(np.percentile(latencies, 99)),
        single_row_cpu_us=single_meter.profile.cpu_seconds / len(rows) * 1e6,
        realtime=realtime,
        batch=batch,
        loop=loop,
        report=report,
    )


def _loop(settings: Any, served: Any) -> LoopStats:
    """The later days the server answered were production traffic; their truth arrives
    (``tandem feedback``), ``tandem monitor`` compares them with what the Bundle froze, and
    ``tandem retrain --promote`` trains a challenger on them and promotes it only if it beats
    the champion on the most recent of them beyond the bootstrap interval."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tandem.monitoring.feedback import add_labels
    from tandem.monitoring.monitor import check
    from tandem.monitoring.retrain import retrain, training_rows_from_log

    window = timedelta(hours=1)
    labels = pa.table({
        "request_id": [f"day-{d}" for d in served.column("day").to_pylist()],
        "rain": served.column("rain"),
    })  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tandem-demo-") as tmp, Registry(settings) as reg:
        pq.write_table(labels, Path(tmp) / "labels.parquet")
        fed = add_labels(reg, NAME, Path(tmp) / "labels.parquet")
        if fed.matched_rows < labels.num_rows:
            raise RuntimeError(
                f"the server logged {fed.matched_rows} of the {labels.num_rows} days it answered"
            )
        monitored = check(reg, f"{NAME}@champion", since=window)
        trigger = {"drifted_columns": monitored.result.drifted_columns,
                   "alarm": monitored.performance.alarm if monitored.performance else None,
                   "source": monitored.source}  # fmt: skip
        champion = reg.get(f"{NAME}@champion")
        data = training_rows_from_log(reg, champion, window)
        decided = retrain(reg, NAME, data, promote=True, evidence={"trigger": trigger})
    return LoopStats(fed.matched_rows, monitored, decided)


def _batch(settings: Any, rows: Any, labels: list[Any]) -> BatchStats:
    """Score ``rows`` again as ``tandem batch`` does: Parquet in, Parquet out, keeping the day."""
    import tempfile

    import pyarrow.parquet as pq

    from tandem.batch import BatchOptions, run_batch

    with tempfile.TemporaryDirectory(prefix="tandem-demo-") as tmp:
        source, target = Path(tmp) / "later-days.parquet", Path(tmp) / "scores.parquet"
        pq.write_table(rows, source)
        with Registry(settings) as reg:
            result = run_batch(f"{NAME}@champion", BatchOptions([source], target, keep=["day"]),
                               registry=reg)  # fmt: skip
        scored = pq.read_table(target).column("label").to_pylist()
    mismatches = sum(a != b for a, b in zip(scored, labels, strict=True))
    return BatchStats(result.rows_in, result.rows_per_second, result.profile.cpu_seconds,
                      result.profile.peak_rss_mb, mismatches)  # fmt: skip


def _realtime(
    home: Any, registry_url: str | None, features: Any, labels: list[Any]
) -> RealtimeStats:
    """Serve the champion from a real ``tandem serve`` process and load it over HTTP."""
    import orjson

    from tandem.serving.loadtest import announced_port, closed_loop

    env = {**os.environ, "TANDEM_HOME": str(home)}
    if registry_url:
        env["TANDEM_REGISTRY"] = registry_url
    command = [sys.executable, "-c", "from tandem.cli import main; main()", "serve",
               f"{NAME}@champion", "--port", "0", "--poll-s", "0", "--ledger-interval", "1"]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        port = announced_port(proc)
        ready_s = time.monotonic() - started
        n = min(REALTIME_REQUESTS, features.num_rows)
        rows = features.slice(0, n).to_pylist()
        bodies = [orjson.dumps({"dataframe_records": [row]}) for row in rows]
        # the client's own ids (the day): what the late labels are joined on (tandem feedback)
        ids = [f"day-{row['day']}" for row in rows]
        cpu_before = process_cpu_seconds(proc.pid)
        load = closed_loop("127.0.0.1", port, "/invocations", bodies, concurrency=REALTIME_CLIENTS,
                           request_ids=ids)  # fmt: skip
        cpu_after = process_cpu_seconds(proc.pid)
        time.sleep(2.5)  # idle ledger intervals: what the server costs between requests
    finally:
        proc.send_signal(signal.SIGTERM)
        try:  # its last act is writing the prediction log, which the loop stage reads
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    failed = [a for a in load.answers if a[0] != 200]
    if failed:
        raise RuntimeError(
            f"the real-time stage got {len(failed)} failed answers, e.g. {failed[0][2][:200]!r}"
        )
    served = [orjson.loads(a[2])["predictions"][0]["label"] for a in load.answers]
    return RealtimeStats(
        requests=n,
        clients=REALTIME_CLIENTS,
        requests_per_s=load.requests_per_s,
        p50_ms=load.latency_quantile(0.5) * 1e3,
        p99_ms=load.latency_quantile(0.99) * 1e3,
        server_cpu_us=(cpu_after - cpu_before) / n * 1e6
        if cpu_before is not None and cpu_after is not None
        else None,
        mismatches=sum(a != b for a, b in zip(served, labels[:n], strict=True)),
        ready_s=ready_s,
    )
