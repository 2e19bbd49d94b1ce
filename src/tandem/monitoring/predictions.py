"""The prediction log: what a model was given and what it answered, kept for monitoring.

The server and batch jobs append rows under ``$TANDEM_HOME/predictions/<model>/date=YYYY-MM-DD/``
(a Hive-style partition per UTC day, so ``tandem monitor --since 24h`` reads two folders, not
the whole history). A row holds the model's input columns, coerced as the model saw them
(numbers as float64 with NaN for missing, categories as strings), its outputs, and the columns
in :data:`RESERVED`: request id, row within the request, time, model version and source.

**Off the request path.** The server logs a batch, not a request: once a batch of requests has
run, its feed and decoded outputs (arrays the batcher made anyway) go to the log with the
batch's request ids and their row counts, one append under a lock for the whole batch, taken
sixteen batches at a time so that the log's code runs with warm caches (see
:meth:`PredictionLog.add_batch`); a logged request costs its share of that and nothing more. A
model whose inputs and outputs are numbers (or fixed-width text) has the batch's arrays
appended as bytes to a buffer for batches of that size (:class:`_Records`; only the logged
requests' rows, copied out, when some of the batch is not logged), so they are freed at once,
in the serving thread, whose next request reuses their memory; other models' batches (text
inputs as objects, image or text statistics) are held as arrays. A writer thread gathers every
:data:`GATHER_S` seconds: it reads each bytes buffer as a structured array and the held arrays
one concatenation a column, copies both into its column buffers, and lets them go. (Held until
the write, the arrays cost the serving core 3 % more at one-row requests: fresh memory for
every allocation; held until the gather, 1-2 %. As bytes, the writer's cost a request fell from
2.7-5.7 to 1.2-3.3 µs and the server's CPU a request by 1-3 %: measured with two servers
sharing one core, see ``benchmarks/bench_predlog_paired.py``.) Every :attr:`LogOptions.flush_s`
seconds (or sooner, once :attr:`LogOptions.flush_rows` rows wait) it makes one Arrow table per
model version from views of its buffers and writes it as one Arrow IPC file, temp + rename, so
a reader never sees half a file and a killed server loses at most the rows that waited. The
buffers are kept from one write to the next: a steady server allocates nothing new for its log.
When more than :attr:`LogOptions.max_queued_rows` wait (the disk cannot keep up), new rows are
dropped and counted rather than let memory grow without bound.

**Hot files, then Parquet.** The writer shares the serving core, so it writes the cheapest
format: uncompressed Arrow IPC, measured at 0.4 µs a row of 40 columns against 1.6 for
Parquet without compression and 2.9 with zstd; it writes it past the page cache where the
file system allows (:class:`HotFiles`), and a served request's id, time, version and source
once a request, run-end encoded, not once a row (a 32-row request's file is 12 % smaller).
Whoever reads the log (``tandem monitor``, ``tandem feedback``, :func:`compact_log`) first
compacts each day's hot files into one Parquet file (zstd, a quarter of the size), off the
serving process. The Parquet file names the hot
files it holds in its metadata, and readers skip hot files a Parquet file already holds, so a
crash between writing the Parquet file and removing its sources duplicates nothing; one
compaction at a time per day, under a file lock.

**Sampling** is per request (per row in batch jobs): a logged request keeps all its rows, so
late labels can be joined to whole requests.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import mmap
import os
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
        max_queued_rows: rows waiting beyond this are dropped (and counted); 0 (the
            default): twenty writes' worth (``flush_rows``), and at least 2,000,000.
    """

    sample: float = 1.0
    flush_s: float = 10.0
    flush_rows: int = 100_000
    max_queued_rows: int = 0

    def __post_init__(self) -> None:
        if self.max_queued_rows == 0:
            object.__setattr__(self, "max_queued_rows", max(2_000_000, 20 * self.flush_rows))
        if not 0 <= self.sample <= 1:
            raise ConfigError(
                f"the log sample must be a share between 0 (off) and 1 (every request); got {self.sample}"
            )
        if not self.flush_s > 0:  # also NaN
            raise ConfigError(
                f"the log's flush interval (--log-flush-s, flush_s) must be more than 0 "
                f"seconds; got {self.flush_s}"
            )
        if self.flush_rows < 1:
            raise ConfigError(
                f"the log's flush size (--log-flush-rows, flush_rows) must be at least 1 row; "
                f"got {self.flush_rows}"
            )
        if self.max_queued_rows < self.flush_rows:
            raise ConfigError(
                f"max_queued_rows ({self.max_queued_rows}) is below flush_rows "
                f"({self.flush_rows}): rows would be dropped before a write is due; raise it"
            )


def log_folder(model: str, settings: Settings | None = None) -> Path:
    """Where ``model``'s prediction log lives."""
    return (settings or Settings.from_env()).home / "predictions" / model


@dataclass(frozen=True, eq=False)  # compared by identity: a key looked up once per batch
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


@dataclass(eq=False)
class _Rows:
    """Logged rows of one layout: per served request its id, rows and time, and batch-job
    tables already laid out. Parallel lists rather than one tuple per request: a tuple is an
    object the cyclic garbage collector tracks, and ten seconds of them made its full passes
    cost more than the log itself (measured: +16 µs a 32-row request; parallel lists: +3)."""

    layout: Layout
    ids: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    #: rows, served and tables
    rows: int = 0


@dataclass(eq=False)
class _Pending(_Rows):
    """Rows waiting for the writer: with each served batch's feed and outputs (their rows are
    the batch's logged requests' rows, in order)."""

    feeds: list[Mapping[str, np.ndarray]] = field(default_factory=list)
    outputs: list[Mapping[str, np.ndarray]] = field(default_factory=list)


#: a batch :meth:`PredictionLog.add_batch` holds: (layout, feed, outputs, answered, time)
_Told = tuple[
    Layout,
    Mapping[str, np.ndarray],
    Mapping[str, np.ndarray],
    Sequence[tuple[str, int, int]],
    float,
]


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
        #: per layout, its one-row requests as records (None: its arrays cannot be)
        self._records: dict[Layout, _Records | None] = {}
        #: record buffers read by the writer, for the next records, by size (see _next_chunk)
        self._spare: dict[int, list[io.BytesIO]] = {}
        #: batches told of but not yet appended (see add_batch)
        self._deferred: deque[_Told] = deque()
        #: of the last few gathers, how many buffers of each size each read (see _gather)
        self._read: deque[Counter[int]] = deque(maxlen=_SPARE_PERIODS)
        self._queued = 0
        self.dropped_rows = 0
        self.written_rows = 0
        self.failures = 0
        self._wake = threading.Event()
        #: set once the writer thread has paid its one-time imports (see ``_run``)
        self.started = threading.Event()
        self._closing = False
        self._part = f"{source}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        #: the writer's side: per layout, the rows gathered since the last write
        self._gathered: dict[Layout, _Gathered] = {}
        self._writing = threading.Lock()  # the writer thread's, and flush()'s from outside
        self._files = HotFiles()
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
        self.add_batch(layout, feed, outputs, [(request_id, 0, n)])

    def add_batch(
        self,
        layout: Layout,
        feed: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        answered: Sequence[tuple[str, int, int]],
    ) -> None:
        """The logged requests of one batch: ``feed`` as given to the graph (rows on the last
        axis), ``outputs`` decoded (rows first), and ``answered``: (request id, first row in
        the batch, rows) of each logged request, in batch order. A model of numbers has them
        kept as bytes (:class:`_Records`): the whole batch's arrays when they are the whole
        batch, each request's rows copied out otherwise. Other models' arrays are kept as
        they are when they are the whole batch; when they are rows next to each other (one
        request of several), views of them; otherwise their rows are taken out first.

        Batches are taken in :data:`_DEFER` at a time (the last few by the writer, at its
        next gather): the call itself only holds the batch. Why: the serving thread runs
        much else between two batches, and the log's code and objects are out of the caches
        by the next (measured alone: 5.6 µs a call of three 32-row requests with warm
        caches, 27-29 with them evicted, and about 30 inside the server). Taken sixteen at
        a time, fifteen of them run warm: head to head, two servers sharing one core, CPU
        1.005 and 1.015 at 32-row requests and 8 connections, 1.004 at 64, 1.011 at one
        row (64 at a time: 1.008). Sixteen batches' arrays are held meanwhile."""
        if not answered:
            return
        deferred = self._deferred
        deferred.append((layout, feed, outputs, answered, time.time()))
        if len(deferred) >= _DEFER:
            self._take_deferred()

    def _take_deferred(self) -> None:
        """Append the batches held by :meth:`add_batch` (either thread may: each is taken
        once)."""
        deferred = self._deferred
        add = self._add_now
        while deferred:
            try:
                item = deferred.popleft()
            except IndexError:  # the other thread took the last one
                break
            add(*item)

    def _add_now(
        self, layout: Layout, feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
        answered: Sequence[tuple[str, int, int]], now: float,
    ) -> None:  # fmt: skip
        """One batch's logged requests appended, answered at ``now`` (see :meth:`add_batch`)."""
        records = self._records.get(layout, _UNSEEN)
        if records is _UNSEEN:  # setdefault: another serving thread may be first
            records = self._records.setdefault(layout, _Records.of(layout, feed, outputs))
        if len(answered) == 1:  # the common case, kept short: this runs on the serving thread
            rid, first, rows = answered[0]
            ids, counts, together = [rid], [rows], True
        else:
            ids, counts, first, rows, together = _extent(answered)
        if not rows:
            return
        if records is not None:
            # the batch's rows from its first: its arrays, whole
            if (
                together
                and not first
                and self._add_record(records, ids, counts, rows, feed, outputs, now)
            ):
                return
            # some of the batch: each request's rows, copied out
            answered = [
                a for a in answered
                if not (a[2] and self._add_record(
                    records, [a[0]], [a[2]], a[2], feed, outputs, now, (a[1], a[1] + a[2])
                ))
            ]  # fmt: skip
            if not answered:
                return
            ids, counts, first, rows, together = _extent(answered)
        if not together:
            index = np.concatenate([np.arange(s, s + n) for _, s, n in answered])
            feed = {k: v[..., index] for k, v in feed.items()}
            outputs = {k: v[index] for k, v in outputs.items()}
        elif first or rows != _rows_of(feed, outputs, layout):
            end = first + rows
            feed = {k: v[..., first:end] for k, v in feed.items()}
            outputs = {k: v[first:end] for k, v in outputs.items()}
        with self._lock:
            p = self._room(layout, rows)
            if p is not None:
                p.ids += ids
                p.counts += counts
                p.times += [now] * len(ids)
                p.feeds.append(feed)
                p.outputs.append(outputs)
        self._wake_if_full()

    def _add_record(
        self, records: _Records, ids: list[str], counts: list[int], rows: int,
        feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], now: float,
        span: tuple[int, int] | None = None,
    ) -> bool:  # fmt: skip
        """A batch's rows appended as bytes to the record of their number, the arrays whole
        or (``span``: first row, end) those rows of them copied out; False (nothing kept)
        when they are not that record's bytes (whole arrays of more rows than these)."""
        with self._lock:
            if self._queued + rows > self.options.max_queued_rows:
                self.dropped_rows += rows
                return True
            record = records.by_rows.get(rows)
            if record is None:
                record = records.by_rows[rows] = records.record(rows, feed, outputs)
                self._next_chunk(record)
            chunk = record.chunks[-1]
            start = chunk.tell()
            write = chunk.write
            try:
                if span is None:
                    for in_feed, key, whole in record.plan:
                        a = (feed if in_feed else outputs)[key]
                        write(a if whole else a.tobytes())  # type: ignore[arg-type]  # a buffer
                else:
                    lo, hi = span
                    for in_feed, key, _ in record.plan:
                        a = (feed if in_feed else outputs)[key]
                        write((a[..., lo:hi] if in_feed else a[lo:hi]).tobytes())
                kept = chunk.tell() - start == record.size
            except (BufferError, TypeError, ValueError, KeyError):  # not one block; no such key
                kept = False
            if not kept:
                chunk.seek(start)  # what it wrote is written over
                return False
            if chunk.tell() + record.size > record.room:  # the next batch would not fit
                self._next_chunk(record)
            record.ids += ids
            record.counts += counts
            record.times += [now] * len(ids)
            self._queued += rows
        self._wake_if_full()
        return True

    def _next_chunk(self, record: _Record) -> None:
        """Give ``record`` a bytes buffer for its next batches, at its start, with room for
        at least one of them and, when it filled one since the last gather, for twice what
        that one held (up to :data:`_CHUNK_MAX`), so that appending a batch never grows a
        buffer (a copy and fresh pages, on the serving thread). Buffers are made in sizes of
        :data:`_CHUNK` times a power of two; a record takes the smallest spare one (see
        :meth:`_gather`) with the room, and only when there is none is one made. Called
        under the lock.

        Why sizes, and the smallest: taking any spare with room handed a 4 MB one to a
        record that wanted 64 KiB, and a record that wanted 4 MB then grew a small one; at
        32-row requests eight to a batch size, that faulted in 8 MB of fresh pages a second,
        on the serving thread (measured: 0.3-0.5 page faults a request, steady)."""
        least = max(_CHUNK, record.size)
        if record.chunks:  # steady traffic: fewer, larger buffers (each costs the writer)
            least = max(least, min(2 * record.room, _CHUNK_MAX))
        size = _CHUNK
        while size < least:
            size <<= 1
        chunk = None
        for have in sorted(self._spare):  # a few sizes
            pool = self._spare[have]
            if have >= size and pool:
                chunk, size = pool.pop(), have
                break
        if chunk is None:  # made: writing at its end zero-fills (faults in) the rest
            chunk = io.BytesIO()
            chunk.seek(size - 1)
            chunk.write(b"\0")
        chunk.seek(0)
        record.chunks.append(chunk)
        record.room = size

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
            p = self._pending[layout] = _Pending(layout)
        p.rows += n
        self._queued += n
        return p

    def _wake_if_full(self) -> None:
        if self._queued >= self.options.flush_rows:
            self._wake.set()

    def flush(self) -> None:
        """Write what waits now (the writer thread does this on its own)."""
        with self._writing:
            self._gather()
            gathered, self._gathered = self._gathered, {}
            for g in gathered.values():
                if not g.rows:
                    continue
                try:
                    self._write(g)
                except Exception:  # a full disk must not take the server down: count, go on
                    self.failures += 1
                    log.exception(
                        "writing %d logged predictions of %s failed", g.rows, g.layout.model
                    )
                with self._lock:
                    self._queued -= g.rows
                # the layouts just written keep their buffers; retired ones let them go
                self._gathered[g.layout] = g.reset()

    def _gather(self) -> None:
        """Copy what waits into the column buffers, so the batches' arrays can go. Called
        holding ``_writing``."""
        self._take_deferred()
        records = []
        idle: list[io.BytesIO] = []
        with self._lock:
            pending, self._pending = self._pending, {}
            for layout, rs in self._records.items():
                if rs is None:
                    continue
                for rows, r in list(rs.by_rows.items()):
                    if r.ids:
                        records.append((layout, r.swap()))
                        self._next_chunk(r)
                    else:  # no batch this size since the last gather: its buffer goes back
                        del rs.by_rows[rows]
                        idle += r.chunks
        for p in pending.values():
            self._gathered_of(p.layout).take(p)
        read = []
        for layout, taken in records:
            read += self._gathered_of(layout).take_records(*taken)
        back = read + idle
        sizes = [_size(c) for c in back]
        with self._lock:
            # their memory is faulted in: reused, never given back for new. Of each size,
            # as many are kept as a gather read at most lately (what a period takes: the
            # most, since a gather a write calls for comes early, with fewer), so the log
            # holds about one period's worth of bytes, however many sizes of batch the
            # traffic makes, and less once the traffic drops
            self._read.append(Counter(sizes[: len(read)]))
            for chunk, size in zip(back, sizes, strict=True):
                self._spare.setdefault(size, []).append(chunk)
            for size, pool in self._spare.items():
                del pool[max(c[size] for c in self._read) :]

    def _gathered_of(self, layout: Layout) -> _Gathered:
        g = self._gathered.get(layout)
        if g is None:
            g = self._gathered[layout] = _Gathered(layout, expect=self.options.flush_rows)
        return g

    def close(self) -> None:
        """Write what waits and stop the writer thread."""
        self._closing = True
        self._wake.set()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        # pyarrow imports pandas on its first numpy conversion (~1 s of CPU, under the GIL):
        # pay it as the server starts, not at the first flush, in the middle of traffic (and
        # before the server freezes what start-up allocated, which it waits for)
        try:
            pa.array(np.zeros(1))
        finally:
            self.started.set()
        flush_s = self.options.flush_s
        due = time.monotonic() + flush_s
        while not self._closing:
            full = self._wake.wait(min(GATHER_S, max(due - time.monotonic(), 0.0)))
            self._wake.clear()
            if self._closing:
                break
            if full or time.monotonic() >= due:
                self.flush()
                due = time.monotonic() + flush_s
                # batches that came during the write counted the rows being written as
                # waiting, and woke the writer again: a second file a flush, of the few
                # rows that came meanwhile (measured: 100,096 rows, then 1,792-2,560)
                self._wake.clear()
                self._wake_if_full()
            else:
                with self._writing:
                    self._gather()

    def _write(self, p: _Gathered) -> None:
        tables = [*p.tables]
        if p.ids:
            tables.append(p.served_table(self.source))
        table = (
            tables[0]
            if len(tables) == 1
            else pa.concat_tables(tables, promote_options="permissive")
        )
        # the days of the runs' times (of each request's, not each row's: see served_table)
        days = (
            np.concatenate(
                [_runs(c).cast(pa.int64()).to_numpy() for c in table.column(TIME).chunks]
            )
            // _DAY_US
        )
        one_day = days.min() == days.max()  # nearly always: no string formatting, no sort
        if not one_day:  # a write across midnight: split its rows, decoded, by day
            table = _plain(table)
            days = table.column(TIME).cast(pa.int64()).to_numpy() // _DAY_US
        for day in days[:1] if one_day else np.unique(days):
            part = table if one_day else table.filter(days == day)
            folder = log_folder(p.layout.model, self._home) / f"date={_day_text(int(day))}"
            folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            target = folder / f"{self._part}-{self._seq:06d}{HOT_SUFFIX}"
            temp = folder / f".{target.name}.tmp"
            self._files.write(temp, part)
            os.replace(temp, target)
            self.written_rows += part.num_rows


def _extent(
    answered: Sequence[tuple[str, int, int]],
) -> tuple[list[str], list[int], int, int, bool]:
    """Of a batch's logged requests: their ids, their rows, the first row, how many rows, and
    whether those rows are next to each other."""
    ids = [rid for rid, _, _ in answered]
    counts = [n for _, _, n in answered]
    first, rows, together = answered[0][1], 0, True
    for _, start, n in answered:
        together = together and start == first + rows
        rows += n
    return ids, counts, first, rows, together


def _rows_of(
    feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], layout: Layout
) -> int:
    """The rows of a served batch (of its outputs: a dict lookup, cheaper than the feed's)."""
    if layout.outputs:
        return len(outputs[layout.outputs[0]])
    return int(next(iter(feed.values())).shape[-1]) if feed else 0


_DAY_US = 86_400 * 10**6
#: the suffix of the writer's hot files (Arrow IPC), compacted into Parquet by readers
HOT_SUFFIX = ".arrow"
_SOURCES = b"tandem.sources"


class HotFiles:
    """Writes a table as one Arrow IPC file, past the page cache where the file system lets it
    (``O_DIRECT``, Linux), else through it.

    Why: the writer shares the serving core, and a buffered ``write()`` of the log cost that
    core more than anything else the log does at 32-row requests: the kernel copies every byte
    into the page cache, then writes the dirty pages back (measured: 6-8 ms of CPU for a 32 MB
    file; its cost under a loaded core varied 3x from run to run). A direct write is the
    disk's DMA from a page-aligned buffer: 1 ms. So the file is serialized once into a buffer of
    our own (page-aligned, kept from one write to the next, as the writer's column buffers are:
    a steady server maps nothing new), written in whole 4 KiB blocks, and cut to its length.
    A file system that refuses ``O_DIRECT`` (``EINVAL``) gets buffered writes from then on.

    Args:
        direct: try direct writes (False: always buffered; both write the same bytes).
    """

    #: the alignment ``O_DIRECT`` wants of the buffer, the length and the offset: the largest
    #: logical block size in use (512 B on older disks, 4 KiB on newer ones)
    ALIGN = 4096

    def __init__(self, direct: bool = True) -> None:
        self.direct = direct and hasattr(os, "O_DIRECT")
        self._buffer: mmap.mmap | None = None

    def write(self, path: Path, table: pa.Table) -> None:
        """``table`` as the Arrow IPC file ``path`` (created; it must not exist)."""
        if self.direct:
            try:
                self._write_direct(path, table)
                return
            except OSError as e:
                path.unlink(missing_ok=True)
                if e.errno != errno.EINVAL:
                    raise
                log.info("%s refuses direct writes (%s); the log writes through the page cache",
                         path.parent, e)  # fmt: skip
                self.direct = False
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
            out.write_table(table)

    def _write_direct(self, path: Path, table: pa.Table) -> None:
        counter = pa.MockOutputStream()  # the file's size, without copying its data
        with pa.ipc.new_file(counter, table.schema) as out:
            out.write_table(table)
        size = counter.size()
        blocks = -(-size // self.ALIGN) * self.ALIGN
        buffer = self._room(blocks)
        with pa.ipc.new_file(pa.FixedSizeBufferWriter(pa.py_buffer(buffer)), table.schema) as out:
            out.write_table(table)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT | os.O_CLOEXEC
        fd = os.open(path, flags, 0o644)
        try:
            with memoryview(buffer) as view:
                done = 0
                while done < blocks:  # a short write of whole blocks goes on; else EINVAL
                    done += os.write(fd, view[done:blocks])
            os.ftruncate(fd, size)  # the last block's padding goes
        finally:
            os.close(fd)

    def _room(self, size: int) -> mmap.mmap:
        """The page-aligned buffer, grown to ``size`` bytes (doubling), a quarter more than
        the first file: a server's writes are about the same size, and one a few rows larger
        than the first must not take a new buffer (fresh pages: measured 40 ms of CPU for
        27 MB, at every server's second or third write)."""
        if self._buffer is None or len(self._buffer) < size:
            old = 2 * len(self._buffer) if self._buffer is not None else _with_room(size)
            self._buffer = mmap.mmap(-1, max(size, old, 1 << 20))
        return self._buffer


def _day_text(day: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)).strftime("%Y-%m-%d")


#: seconds at most that a served batch's arrays wait before the writer copies their rows
#: into its buffers (see the module docstring). Not shorter: at 0.1 s, paired runs read
#: 0.4-1.5 % less CPU a one-row request (inside their noise), but the writer's ten wakes a
#: second cost a saturated server its goodput under overload (test_overload failed 3 runs
#: in 22 at 0.1 s, 0 in 14 at 1 s).
GATHER_S = 1.0


_UNSEEN: Any = object()
#: a record's bytes go in buffers of at least this size, and of at least one batch (a
#: spare one smaller than that is grown once, and then reused at that size). Why buffers,
#: reused: a buffer that grew to a second's worth (tens of MB) was given back to the system
#: at each gather and faulted in again, page by page, by the serving thread (+3 µs a 32-row
#: request). Why this small: each size of batch has a record, so a buffer each; at 1 MB,
#: the 60-odd sizes that one-row requests at 64 connections make held 160 MB (twice over:
#: the records' and the spares)
_CHUNK = 64 << 10
#: the largest buffer a record is given for its steady traffic. Why it grows: each buffer
#: costs a switch on the serving thread and a read of each column in the writer's gather
#: (measured alone, 32-row requests four to a batch, 64 KiB buffers, one a batch: 3.5 µs a
#: request to append and 4.1 to gather; 1 MB buffers: 2.3 and 1.6)
_CHUNK_MAX = 4 << 20
#: batches :meth:`PredictionLog.add_batch` holds before it appends them (see there)
_DEFER = 16
#: the gathers whose most read buffers of a size are kept as spares of that size
_SPARE_PERIODS = 4


def _with_room(size: int) -> int:
    """A buffer's first size for ``size`` (bytes or rows): a quarter more, since the writes
    that follow the first are about its size, some a little larger (see HotFiles._room and
    _Gathered._room)."""
    return size + size // 4


def _size(chunk: io.BytesIO) -> int:
    with chunk.getbuffer() as view:
        return view.nbytes


@dataclass(eq=False)
class _Records:
    """A layout's served batches kept as bytes, not as arrays: one :class:`_Record` per
    batch size.

    Why: a batch's arrays (its feed, each output) held until the writer gathers them cost
    the serving core twice: memory that stays taken (each new request's arrays in fresh
    memory, not the cached memory of the last one's), and for the writer, one concatenation
    an array (0.2-0.4 µs each, whatever its size, so most of the cost of a one-row request).
    Appending the arrays' bytes to one buffer lets them go at once, and the writer reads a
    buffer of same-size batches as a structured array: one strided copy a column.
    Only for arrays of numbers or fixed-width text (an object array's bytes are pointers),
    as the first batch shows them: the same model version always gives the same kinds.
    """

    feed_keys: tuple[str, ...]
    output_keys: tuple[str, ...]
    #: (buffer key, dtype, the shape of one row: (features,) for the feed, () for outputs)
    columns: tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]
    by_rows: dict[int, _Record] = field(default_factory=dict)

    @classmethod
    def of(
        cls, layout: Layout, feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> _Records | None:
        """The records of ``layout``'s batches like this one; None when its arrays cannot
        be kept as bytes (text as objects, image or text statistics)."""
        if layout.statistics is not None or layout.categorical:
            return None
        feed_keys = (NUMERIC_INPUT,) if layout.numeric else ()
        columns: list[tuple[str, np.dtype[Any], tuple[int, ...]]] = []
        for key in feed_keys:
            a = feed.get(key)
            if a is None or a.ndim != 2:
                return None
            columns.append((key, a.dtype, (a.shape[0],)))
        for key in layout.outputs:
            a = outputs.get(key)
            if a is None or a.ndim != 1:
                return None
            columns.append((OUTPUT_PREFIX + key, a.dtype, ()))
        if not columns or any(dtype.kind not in "biufU" for _, dtype, _ in columns):
            return None
        return cls(feed_keys, layout.outputs, tuple(columns))

    def record(
        self, rows: int, feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> _Record:
        """The record of a batch of ``rows`` rows like this one: the feed's arrays (features,
        rows) and each output's (rows,), their bytes one after the other. An array that is
        a view of others (a class's probabilities: a column of the graph's output) is copied
        out (``tobytes``) before it is appended, as the first batch of this size shows."""
        fields = [(key, dtype, (*shape, rows)) for key, dtype, shape in self.columns]
        dtype = np.dtype(fields)
        plan = tuple(
            (in_feed, key, bool(source[key].flags.c_contiguous))
            for in_feed, keys, source in (
                (True, self.feed_keys, feed),
                (False, self.output_keys, outputs),
            )
            for key in keys
        )
        return _Record(dtype, dtype.itemsize, plan)


@dataclass(eq=False)
class _Record:
    """Served batches of one size, as bytes (see :class:`_Records`), with their requests."""

    dtype: np.dtype[Any]
    size: int
    #: per array, in the record's order: (from the feed, not the outputs; its key; whether
    #: it is one block already, else it is copied out first)
    plan: tuple[tuple[bool, str, bool], ...]
    #: the batches' bytes, in buffers of at least :data:`_CHUNK` bytes (whole batches each,
    #: up to each one's position)
    chunks: list[io.BytesIO] = field(default_factory=list)
    #: the bytes the last of them holds in all (its batches start at 0, at a whole batch)
    room: int = 0
    ids: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def swap(self) -> tuple[_Record, list[io.BytesIO], list[str], list[int], list[float]]:
        """What waits, handed over (the record then needs a buffer). Called under the
        log's lock."""
        taken = self, self.chunks, self.ids, self.counts, self.times
        self.chunks, self.ids, self.counts, self.times = [], [], [], []
        return taken


@dataclass(eq=False)
class _Gathered(_Rows):
    """The writer's rows of one layout since its last write, the served ones copied into
    column buffers (rows on the last axis, kept from one write to the next)."""

    #: buffer key (the feed's inputs, statistics, outputs) -> buffer, rows last
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    filled: int = 0
    #: the rows a write is expected to hold (``flush_rows``): a buffer's first size, with
    #: room to spare (see :meth:`_room`)
    expect: int = 0

    def take(self, p: _Pending) -> None:
        """Copy ``p``'s rows in: one concatenation per column, straight into the buffers."""
        self.ids += p.ids
        self.counts += p.counts
        self.times += p.times
        self.tables += p.tables
        self.rows += p.rows
        if not p.feeds:
            return
        layout = p.layout
        parts: dict[str, list[np.ndarray]] = {}
        if layout.numeric:
            parts[NUMERIC_INPUT] = [f[NUMERIC_INPUT] for f in p.feeds]
        if layout.categorical:
            parts[CATEGORICAL_INPUT] = [f[CATEGORICAL_INPUT] for f in p.feeds]
        if layout.statistics is not None:
            stats = [layout.statistics(f) or {} for f in p.feeds]
            parts.update((_STATISTIC + k, [x[k] for x in stats]) for k in stats[0])
        parts.update((OUTPUT_PREFIX + n, [o[n] for o in p.outputs]) for n in layout.outputs)
        n = sum(p.counts)  # the served rows: as many as the feeds hold
        end = self.filled + n
        for key, arrays in parts.items():
            buffer = self._room(key, arrays[0], end)
            np.concatenate(arrays, axis=-1, out=buffer[..., self.filled : end])
        self.filled = end

    def take_records(
        self, record: _Record, chunks: list[io.BytesIO], ids: list[str], counts: list[int],
        times: list[float],
    ) -> list[io.BytesIO]:  # fmt: skip
        """Copy batches kept as bytes in, one strided copy a column a chunk; the chunks back,
        read, each at its start."""
        self.ids += ids
        self.counts += counts
        self.times += times
        for chunk in chunks:
            used = chunk.tell()
            if used:
                with chunk.getbuffer() as view:
                    self._take_chunk(record, view[:used])
            chunk.seek(0)
        return chunks

    def _take_chunk(self, record: _Record, data: memoryview) -> None:
        """One chunk's batches (the arrays made here are gone when it returns, so that the
        chunk can be written again)."""
        batches = np.frombuffer(data, dtype=record.dtype)
        per = record.dtype[0].shape[-1]  # rows a batch
        n = len(batches) * per
        self.rows += n
        end = self.filled + n
        for key in record.dtype.names or ():
            column = batches[key]  # (batches, features, rows) or (batches, rows)
            if column.ndim == 3:  # -> (features, batches, rows): the buffer's (features, n)
                column = column.transpose(1, 0, 2)
            target = self._room(key, column[..., 0, :], end)[..., self.filled : end]
            # a view: the rows' axis, contiguous in the buffer, split into (batches, rows)
            target.reshape(*target.shape[:-1], len(batches), per)[...] = column
        self.filled = end

    def _room(self, key: str, first: np.ndarray, end: int) -> np.ndarray:
        """``key``'s buffer, grown (doubling) to hold ``end`` rows. Its first size is a
        write's rows and a quarter more (a write holds the rows that came while the writer
        woke, too): memory is only taken as rows fill it, and growing it (fresh pages, a
        copy) is left to traffic that outruns the writer, not paid in steps from 1,024 rows
        at every server's start (measured at 32-row requests: the first gather cost 0.12 s
        of CPU, 25 steady ones' worth)."""
        buffer = self.columns.get(key)
        if buffer is not None and buffer.shape[-1] >= end and buffer.shape[:-1] == first.shape[:-1]:
            return buffer
        dtype = buffer.dtype if buffer is not None else first.dtype
        if dtype.kind in "USO":  # text of any width: a fixed width would cut a longer label
            dtype = np.dtype(object)
        # not text: an object array's every slot is written (None) as it is made
        first_size = 0 if dtype.kind == "O" else _with_room(min(self.expect, _EXPECT_MAX))
        capacity = max(end, 2 * (buffer.shape[-1] if buffer is not None else 0), first_size, 1024)
        grown = np.empty((*first.shape[:-1], capacity), dtype)
        if buffer is not None and self.filled:
            grown[..., : self.filled] = buffer[..., : self.filled]
        self.columns[key] = grown
        return grown

    def served_table(self, source: str) -> pa.Table:
        """One table of the served rows: views of the buffers for numbers, one conversion a
        column otherwise, nothing per row in Python; valid until the buffers take more."""
        layout = self.layout
        counts = np.fromiter(self.counts, dtype=np.int64, count=len(self.counts))
        ends = np.cumsum(counts)
        total = int(ends[-1]) if len(ends) else 0
        which = np.repeat(np.arange(len(self.ids), dtype=np.int32), counts)
        rows = np.arange(total, dtype=np.int32) - (ends - counts).astype(np.int32)[which]
        some = counts > 0  # run ends must grow: a request of no rows has none to run over
        ids, times = self.ids, np.asarray(self.times)
        if not some.all():
            ids, times, ends = (
                [i for i, k in zip(ids, some, strict=True) if k],
                times[some],
                ends[some],
            )
        ends32 = pa.array(ends.astype(np.int32))
        whole = pa.array(np.array([total], dtype=np.int32))
        # request id, time, version and source once a request (or once), run-end encoded: a
        # 32-row request writes them once, not 32 times (readers decode them, see _plain)
        columns: dict[str, Any] = {
            REQUEST_ID: pa.RunEndEncodedArray.from_arrays(ends32, pa.array(ids, pa.string())),
            ROW: pa.array(rows),
            TIME: pa.RunEndEncodedArray.from_arrays(
                ends32, pa.array((times * 1e6).astype(np.int64), _TIME_TYPE)
            ),
            VERSION: pa.RunEndEncodedArray.from_arrays(
                whole, pa.array([layout.version], pa.int32())
            ),
            SOURCE: pa.RunEndEncodedArray.from_arrays(whole, pa.array([source], pa.string())),
        }
        filled = {k: v[..., :total] for k, v in self.columns.items()}
        if layout.numeric:
            matrix = filled[NUMERIC_INPUT]
            columns.update((n, matrix[i]) for i, n in enumerate(layout.numeric))
        columns.update(
            (k[len(_STATISTIC) :], v) for k, v in filled.items() if k.startswith(_STATISTIC)
        )
        if layout.categorical:
            matrix = filled[CATEGORICAL_INPUT]
            columns.update(
                (n, pa.array(matrix[i], pa.string())) for i, n in enumerate(layout.categorical)
            )
        for name in layout.outputs:
            columns[OUTPUT_PREFIX + name] = filled[OUTPUT_PREFIX + name]
        return pa.table(columns)

    def reset(self) -> _Gathered:
        """Empty, keeping the buffers."""
        self.ids, self.counts, self.times, self.tables = [], [], [], []
        self.filled = self.rows = 0
        return self


#: the most rows a column buffer is first made for (a larger ``flush_rows`` grows it)
_EXPECT_MAX = 1 << 20
#: the buffer key of an input statistic (an image or text model's), before its column name
_STATISTIC = "stat:"


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
    runs = 1 if n else 0
    whole = pa.array(np.array([n][:runs], dtype=np.int32))

    def once(value: Any, kind: pa.DataType) -> pa.Array:  # one run over the n rows
        return pa.RunEndEncodedArray.from_arrays(whole, pa.array([value][:runs], kind))

    columns: dict[str, Any] = {
        REQUEST_ID: once(job_id, pa.string()),
        ROW: pa.array(first_row + index, pa.int64()),
        TIME: once(int(time.time() * 1e6), _TIME_TYPE),
        VERSION: once(layout.version, pa.int32()),
        SOURCE: once("batch", pa.string()),
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
        return _plain(pa.ipc.open_file(source).read_all())


def _runs(array: pa.Array) -> pa.Array:
    """A run-end encoded array's run values; any other array as it is."""
    return array.values if pa.types.is_run_end_encoded(array.type) else array


def _plain(table: pa.Table) -> pa.Table:
    """``table`` with its run-end encoded columns (the reserved ones the writer encodes
    once a request) decoded: a column per row, as readers and Parquet want them."""
    for i, f in enumerate(table.schema):
        if pa.types.is_run_end_encoded(f.type):
            table = table.set_column(i, f.name, pc.run_end_decode(table.column(i)))
    return table


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
