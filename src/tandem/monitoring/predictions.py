"""The prediction log: what a model was given and what it answered, kept for monitoring.

The server and batch jobs append rows under ``$TANDEM_HOME/predictions/<model>/date=YYYY-MM-DD/``
(a Hive-style partition per UTC day, so ``tandem monitor --since 24h`` reads two folders, not
the whole history). A row holds the model's input columns, coerced as the model saw them
(numbers as float64 with NaN for missing, categories as strings), its outputs, and the columns
in :data:`RESERVED`: request id, row within the request, time, model version and source.

**Off the request path.** A request only appends references to arrays that already exist
(the graph feed and the decoded outputs) to lists, under a lock; a writer thread turns
what gathered into one Arrow table per model version every :attr:`LogOptions.flush_s` seconds
(or sooner, once :attr:`LogOptions.flush_rows` rows wait), one concatenation per column, and
writes it as one Arrow IPC file, temp + rename, so a reader never sees half a file and a
killed server loses at most the rows that waited. When more than
:attr:`LogOptions.max_queued_rows` wait (the disk cannot keep up), new rows are dropped and
counted rather than let memory grow without bound.

**Hot files, then Parquet.** The writer shares the serving core, so it writes the cheapest
format: uncompressed Arrow IPC, measured at 0.4 µs a row of 40 columns against 1.6 for
Parquet without compression and 2.9 with zstd. Whoever reads the log (``tandem monitor``,
``tandem feedback``, :func:`compact_log`) first compacts each day's hot files into one Parquet
file (zstd, a quarter of the size), off the serving process. The Parquet file names the hot
files it holds in its metadata, and readers skip hot files a Parquet file already holds, so a
crash between writing the Parquet file and removing its sources duplicates nothing; one
compaction at a time per day, under a file lock.

**Sampling** is per request (per row in batch jobs): a logged request keeps all its rows, so
late labels can be joined to whole requests.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tandem.bundle.manifest import CATEGORICAL_INPUT, NUMERIC_INPUT, split_kinds
from tandem.bundle.outputs import Outputs
from tandem.config import Settings
from tandem.data.schema import SPECIAL_KINDS, ColumnSpec, coerce_column
from tandem.errors import ConfigError, DataError

if TYPE_CHECKING:
    from tandem.inference.predictor import Predictor

__all__ = [
    "OUTPUT_PREFIX",
    "RESERVED",
    "Layout",
    "LogOptions",
    "PredictionLog",
    "batch_rows",
    "compact_log",
    "decoded_columns",
    "log_folder",
    "logged_outputs",
    "output_columns",
    "read_log",
    "since_ago",
]

log = logging.getLogger("tandem.monitoring")

#: tandem's own columns in a log file; a model input with one of these names is not logged
REQUEST_ID, ROW, TIME, VERSION, SOURCE = "__request_id", "__row", "__time", "__version", "__source"
RESERVED = (REQUEST_ID, ROW, TIME, VERSION, SOURCE)
#: outputs are logged as ``__label``, ``__proba_<class>``, ``__prediction``
OUTPUT_PREFIX = "__"
_TIME_TYPE = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True, kw_only=True)
class LogOptions:
    """How much to log and how often to write.

    Attributes:
        sample: the share of requests (rows, in batch jobs) logged, 0 to 1; 0 turns it off.
        flush_s: the longest a row waits in memory before it is written.
        flush_rows: write sooner once this many rows wait.
        max_queued_rows: rows waiting beyond this are dropped (and counted).
    """

    sample: float = 1.0
    flush_s: float = 10.0
    flush_rows: int = 100_000
    max_queued_rows: int = 2_000_000

    def __post_init__(self) -> None:
        if not 0 <= self.sample <= 1:
            raise ConfigError(
                f"the log sample must be a share between 0 (off) and 1 (every request); got {self.sample}"
            )
        if not self.flush_s > 0 or self.flush_rows < 1 or self.max_queued_rows < 1:
            raise ConfigError(
                "flush_s must be > 0 and flush_rows, max_queued_rows >= 1; got "
                f"{self.flush_s}, {self.flush_rows}, {self.max_queued_rows}"
            )


def log_folder(model: str, settings: Settings | None = None) -> Path:
    """Where ``model``'s prediction log lives."""
    return (settings or Settings.from_env()).home / "predictions" / model


@dataclass(frozen=True)
class Layout:
    """How one model version's rows are laid out: which feed row is which input column, and
    its outputs. Made once per loaded version, so a request carries no names."""

    model: str
    version: int
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    outputs: tuple[str, ...]
    #: an image or text model's per-row input statistics, from a feed (the log keeps those,
    #: not pixels or tokens: see ``Predictor.input_statistics``), and its encode step
    statistics: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray] | None] | None = None
    encode: Callable[[Mapping[str, Any]], dict[str, np.ndarray]] | None = None

    @classmethod
    def of(
        cls, model: str, version: int, inputs: Sequence[ColumnSpec], outputs: Sequence[str],
        predictor: Predictor | None = None,
    ) -> Layout:  # fmt: skip
        numeric, categorical = split_kinds(inputs)
        clash = sorted({c.name for c in inputs} & set(RESERVED))
        if clash:
            raise ConfigError(
                f"model {model}:{version} has input column(s) {clash}, names the prediction log "
                "keeps for itself: rename them in the training data to log this model"
            )
        special = any(c.kind in SPECIAL_KINDS for c in inputs)
        return cls(
            model,
            version,
            tuple(c.name for c in numeric),
            tuple(c.name for c in categorical),
            tuple(outputs),
            predictor.input_statistics if special and predictor else None,
            predictor.encode if special and predictor else None,
        )


@dataclass
class _Pending:
    """Rows waiting to be written: served requests, or batch tables already laid out.

    A request's parts go into parallel lists rather than one tuple per request: a tuple is an
    object the cyclic garbage collector tracks, and ten seconds of them made its full passes
    cost more than the log itself (measured: +16 µs a 32-row request; parallel lists: +3)."""

    layout: Layout
    ids: list[str]
    counts: list[int]
    times: list[float]
    feeds: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    tables: list[pa.Table]
    rows: int = 0


class PredictionLog:
    """Appends predictions to the log in a writer thread; see the module docstring.

    Args:
        source: ``serve`` or ``batch``, written in every row.
        options: sampling and flushing.
        settings: where ``TANDEM_HOME`` is (default: from the environment).

    Example:
        >>> plog = PredictionLog("serve")  # doctest: +SKIP
        >>> plog.add(layout, "req-1", feed, outputs, 3)  # doctest: +SKIP
        >>> plog.close()  # doctest: +SKIP
    """

    def __init__(
        self, source: str, options: LogOptions | None = None, *, settings: Settings | None = None
    ) -> None:
        self.source = source
        self.options = options or LogOptions()
        self._home = settings or Settings.from_env()
        self._lock = threading.Lock()
        self._pending: dict[Layout, _Pending] = {}
        self._queued = 0
        self.dropped_rows = 0
        self.written_rows = 0
        self.failures = 0
        self._wake = threading.Event()
        self._closing = False
        self._part = f"{source}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._scratch = _Scratch(2 * self.options.flush_rows)
        self._thread = threading.Thread(target=self._run, name="tandem-predlog", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        """Whether the next request is logged (draws once per request)."""
        sample = self.options.sample
        return sample >= 1 or (sample > 0 and random.random() < sample)

    def add(
        self,
        layout: Layout,
        request_id: str,
        feed: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        n: int,
    ) -> None:
        """One served request's rows: ``feed`` as given to the graph, ``outputs`` decoded.
        Costs an append; the caller has decided :meth:`sampled`."""
        with self._lock:
            p = self._room(layout, n)
            if p is not None:
                p.ids.append(request_id)
                p.counts.append(n)
                p.times.append(time.time())
                p.feeds.append(feed)
                p.outputs.append(outputs)
        self._wake_if_full()

    def add_table(self, layout: Layout, table: pa.Table) -> None:
        """Rows already laid out as a log table (see :func:`batch_rows`)."""
        if not table.num_rows:
            return
        with self._lock:
            p = self._room(layout, table.num_rows)
            if p is not None:
                p.tables.append(table)
        self._wake_if_full()

    def _room(self, layout: Layout, n: int) -> _Pending | None:
        """Where ``n`` more rows of ``layout`` go, counted as waiting; None when they would
        pass :attr:`LogOptions.max_queued_rows` (then they are counted as dropped). Called
        under the lock."""
        if self._queued + n > self.options.max_queued_rows:
            self.dropped_rows += n
            return None
        p = self._pending.get(layout)
        if p is None:
            p = self._pending[layout] = _Pending(layout, [], [], [], [], [], [])
        p.rows += n
        self._queued += n
        return p

    def _wake_if_full(self) -> None:
        if self._queued >= self.options.flush_rows:
            self._wake.set()

    def flush(self) -> None:
        """Write what waits now (the writer thread does this on its own)."""
        with self._lock:
            pending, self._pending, self._queued = self._pending, {}, 0
        for p in pending.values():
            try:
                self._write(p)
            except Exception:  # a full disk must not take the server down: count, log, go on
                self.failures += 1
                log.exception("writing %d logged predictions of %s failed", p.rows, p.layout.model)

    def close(self) -> None:
        """Write what waits and stop the writer thread."""
        self._closing = True
        self._wake.set()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        # pyarrow imports pandas on its first numpy conversion (~1 s of CPU, under the GIL):
        # pay it as the server starts, not at the first flush, in the middle of traffic
        pa.array(np.zeros(1))
        while not self._closing:
            self._wake.wait(self.options.flush_s)
            self._wake.clear()
            if not self._closing:
                self.flush()

    def _write(self, p: _Pending) -> None:
        tables = [*p.tables]
        if p.ids:
            tables.append(_served_table(p, self.source, self._scratch))
        table = (
            tables[0]
            if len(tables) == 1
            else pa.concat_tables(tables, promote_options="permissive")
        )
        days = table.column(TIME).cast(pa.int64()).to_numpy() // _DAY_US
        one_day = days.min() == days.max()  # nearly always: no string formatting, no sort
        for day in days[:1] if one_day else np.unique(days):
            part = table if one_day else table.filter(days == day)
            folder = log_folder(p.layout.model, self._home) / f"date={_day_text(int(day))}"
            folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            target = folder / f"{self._part}-{self._seq:06d}{HOT_SUFFIX}"
            temp = folder / f".{target.name}.tmp"
            with pa.OSFile(str(temp), "wb") as sink, pa.ipc.new_file(sink, part.schema) as out:
                out.write_table(part)
            os.replace(temp, target)
            self.written_rows += part.num_rows


_DAY_US = 86_400 * 10**6
#: the suffix of the writer's hot files (Arrow IPC), compacted into Parquet by readers
HOT_SUFFIX = ".arrow"
_SOURCES = b"tandem.sources"


def _day_text(day: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)).strftime("%Y-%m-%d")


class _Scratch:
    """The writer's column buffers, kept from one flush to the next.

    A flush gathers ~100k rows a column; into fresh arrays, each flush would map new pages
    (large arrays come from mmap and go back on free), and the page faults alone cost the
    serving core more than the copy (measured: 0.3 faults and ~6 µs of system time a
    32-row request). Buffers up to ``keep_rows`` long are reused; longer ones (the writer
    fell behind) are not kept."""

    def __init__(self, keep_rows: int) -> None:
        self.keep_rows = keep_rows
        self._buffers: dict[tuple[Any, ...], np.ndarray] = {}

    def out(self, key: tuple[Any, ...], lead: tuple[int, ...], rows: int, dtype: Any) -> np.ndarray:
        """A ``lead + (rows,)`` array of ``dtype`` whose rows along the last axis are
        contiguous; its contents are whatever the last flush left."""
        dtype = np.dtype(dtype)
        buffer = self._buffers.get(key)
        if (
            buffer is None
            or buffer.shape[:-1] != lead
            or buffer.dtype != dtype
            or buffer.shape[-1] < rows
        ):
            buffer = np.empty((*lead, rows), dtype)
            if rows <= self.keep_rows:
                self._buffers[key] = buffer
        return buffer[..., :rows]


def _served_table(p: _Pending, source: str, scratch: _Scratch) -> pa.Table:
    """One table from the waiting requests: one array operation per column, none per row;
    the columns are views of ``scratch``, valid until the next flush."""
    layout = p.layout
    ids, feeds, outputs = p.ids, p.feeds, p.outputs
    counts = np.fromiter(p.counts, dtype=np.int64, count=len(p.counts))
    total = int(counts.sum())
    which = np.repeat(np.arange(len(ids), dtype=np.int32), counts)
    starts = np.cumsum(counts) - counts
    columns: dict[str, Any] = {
        REQUEST_ID: pa.array(ids, pa.string()).take(pa.array(which)),
        ROW: pa.array((np.arange(total, dtype=np.int64) - starts[which]).astype(np.int32)),
        TIME: pa.array((np.asarray(p.times)[which] * 1e6).astype(np.int64), _TIME_TYPE),
        VERSION: pa.array(np.full(total, layout.version, dtype=np.int32)),
        SOURCE: pa.repeat(pa.scalar(source, pa.string()), total),
    }
    if layout.numeric:
        parts = [f[NUMERIC_INPUT] for f in feeds]
        out = scratch.out((layout, NUMERIC_INPUT), (len(layout.numeric),), total, parts[0].dtype)
        matrix = np.concatenate(parts, axis=1, out=out)
        columns.update((n, matrix[i]) for i, n in enumerate(layout.numeric))
    if layout.statistics is not None:
        stats = [layout.statistics(f) or {} for f in feeds]
        columns.update((k, np.concatenate([p[k] for p in stats])) for k in stats[0])
    if layout.categorical:
        matrix = np.concatenate([f[CATEGORICAL_INPUT] for f in feeds], axis=1)
        columns.update(
            (n, pa.array(matrix[i], pa.string())) for i, n in enumerate(layout.categorical)
        )
    for name in layout.outputs:
        parts = [o[name] for o in outputs]
        if parts[0].dtype == object:  # labels as text: Arrow copies them anyway
            columns[OUTPUT_PREFIX + name] = np.concatenate(parts)
            continue
        out = scratch.out((layout, name), (), total, parts[0].dtype)
        columns[OUTPUT_PREFIX + name] = np.concatenate(parts, out=out)
    return pa.table(columns)


def output_columns(outputs: Outputs, raw: np.ndarray) -> dict[str, np.ndarray]:
    """A model's outputs as the log names them (:data:`OUTPUT_PREFIX` + the decoded columns),
    from the graph's output (n, k), or (n,) for one column; labels and clusters as text."""
    raw = np.asarray(raw, dtype=np.float64)
    return decoded_columns(outputs, outputs.decode(raw.reshape(len(raw), -1)))


def decoded_columns(outputs: Outputs, decoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decoded outputs (the Predictor's decode step) as the log names and keeps them."""
    return {OUTPUT_PREFIX + k: v for k, v in outputs.as_text(decoded).items()}


def logged_outputs(table: pa.Table, outputs: Outputs) -> dict[str, np.ndarray]:
    """The output columns of logged rows (of one version, whose ``outputs`` name them)."""
    names = [OUTPUT_PREFIX + c for c in outputs.columns]
    if not table.num_rows:
        return {}
    got = {
        n[len(OUTPUT_PREFIX) :]: table.column(n).to_numpy(zero_copy_only=False)
        for n in names
        if n in table.column_names
    }
    # as the reference was profiled: the server logs cluster ids as numbers, flags as booleans
    return {OUTPUT_PREFIX + k: v for k, v in outputs.as_text(got).items()}


def batch_rows(
    layout: Layout,
    specs: Sequence[ColumnSpec],
    job_id: str,
    first_row: int,
    inputs: pa.Table | pa.RecordBatch,
    outputs: pa.Table,
    keep: np.ndarray,
) -> pa.Table:
    """Log rows of one batch chunk: ``inputs`` as read, ``outputs`` as scored (same rows), for
    the rows where ``keep`` is True. The request id is the job's; the row is the job's row."""
    index = np.flatnonzero(keep)
    picked = inputs.take(pa.array(index)) if index.size < inputs.num_rows else inputs
    n = int(index.size)
    columns: dict[str, Any] = {
        REQUEST_ID: pa.repeat(pa.scalar(job_id, pa.string()), n),
        ROW: pa.array(first_row + index, pa.int64()),
        TIME: pa.array(np.full(n, int(time.time() * 1e6)), _TIME_TYPE),
        VERSION: pa.array(np.full(n, layout.version, dtype=np.int32)),
        SOURCE: pa.repeat(pa.scalar("batch", pa.string()), n),
    }
    for spec in specs:
        if spec.kind in SPECIAL_KINDS:
            if layout.statistics is not None and layout.encode is not None:
                feed = layout.encode({spec.name: picked.column(spec.name)})
                columns.update(layout.statistics(feed) or {})
            continue
        values = coerce_column(spec, picked.column(spec.name))
        columns[spec.name] = pa.array(values, pa.string()) if spec.kind == "categorical" else values
    scored = outputs.take(pa.array(index)) if index.size < outputs.num_rows else outputs
    for name in layout.outputs:
        columns[OUTPUT_PREFIX + name] = scored.column(name)
    return pa.table(columns)


def compact_log(model: str, settings: Settings | None = None) -> int:
    """Compact every day of ``model``'s log into Parquet (see the module docstring); returns
    the hot files compacted. Readers do this on their own."""
    root = log_folder(model, settings)
    return (
        sum(_compact(folder)[0] for folder in sorted(root.glob("date=*"))) if root.is_dir() else 0
    )


def _held(folder: Path) -> set[str]:
    """The hot files that the day's Parquet files already hold."""
    held: set[str] = set()
    for f in folder.glob("*.parquet"):
        meta = pq.read_schema(f).metadata or {}
        if _SOURCES in meta:
            held.update(json.loads(meta[_SOURCES]))
    return held


def _compact(folder: Path) -> tuple[int, set[str]]:
    """One day's hot files into one Parquet file: how many, and the hot files the day's
    Parquet files hold now (readers skip those). Nothing is compacted when another process is
    at it, or the folder cannot be written; then readers read the hot files."""
    try:
        lock = open(folder / ".compact.lock", "a")  # noqa: SIM115 - held until the end
    except OSError:
        return 0, _held(folder)
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0, _held(folder)
        held = _held(folder)
        hot = sorted(folder.glob(f"*{HOT_SUFFIX}"))
        for f in hot:
            if f.name in held:  # compacted before a crash removed it
                f.unlink(missing_ok=True)
        fresh = [f for f in hot if f.name not in held]
        if not fresh:
            return 0, held
        table = pa.concat_tables([_read_hot(f) for f in fresh], promote_options="permissive")
        names = [f.name for f in fresh]
        table = table.replace_schema_metadata({_SOURCES: json.dumps(names)})
        target = folder / f"compacted-{uuid.uuid4().hex[:12]}.parquet"
        temp = folder / f".{target.name}.tmp"
        strings = [n for n, t in zip(table.column_names, table.schema.types, strict=True)
                   if pa.types.is_string(t)]  # fmt: skip
        # dictionary encoding only where it pays: it made float writes 4.8× slower
        pq.write_table(table, temp, use_dictionary=strings, compression="zstd")
        os.replace(temp, target)
        for f in fresh:
            f.unlink(missing_ok=True)
        return len(fresh), held | set(names)


def _read_hot(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def read_log(
    model: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    settings: Settings | None = None,
) -> pa.Table:
    """The logged rows of ``model`` with ``since <= time < until`` (UTC), oldest first; the
    days read are compacted first.

    Raises:
        DataError: nothing was logged for ``model`` (in that window).
    """
    root = log_folder(model, settings)
    if not root.is_dir():
        raise DataError(
            f"no predictions of {model} are logged under {root}: serve it (or run a batch job "
            "with it) with the prediction log on (--log-sample > 0)"
        )
    first_day = since.astimezone(UTC).date() if since is not None else None
    tables = []
    for folder in sorted(root.glob("date=*")):
        try:
            day = datetime.strptime(folder.name[5:], "%Y-%m-%d").date()
        except ValueError:
            continue
        if first_day is not None and day < first_day:
            continue
        _, held = _compact(folder)
        tables += [pq.read_table(f) for f in sorted(folder.glob("*.parquet"))]
        tables += [
            _read_hot(f) for f in sorted(folder.glob(f"*{HOT_SUFFIX}")) if f.name not in held
        ]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    if table is not None:
        table = table.replace_schema_metadata(None)
    if table is not None and (since is not None or until is not None):
        t = table.column(TIME)
        mask = None
        if since is not None:
            mask = pc.greater_equal(t, pa.scalar(since.astimezone(UTC), _TIME_TYPE))
        if until is not None:
            upper = pc.less(t, pa.scalar(until.astimezone(UTC), _TIME_TYPE))
            mask = upper if mask is None else pc.and_(mask, upper)
        table = table.filter(mask)
    if table is None or table.num_rows == 0:
        window = f" since {since:%Y-%m-%d %H:%M} UTC" if since is not None else ""
        raise DataError(f"no predictions of {model} are logged{window} (looked in {root})")
    return table.sort_by(TIME)


def since_ago(delta: timedelta) -> datetime:
    """The moment ``delta`` before now, in UTC."""
    return datetime.now(UTC) - delta
