"""The dynamic batcher: requests queue, a batch forms the moment the executor frees up.

There is no timer. When the executor is idle a request starts at once, alone; while it runs,
new requests queue, and when it finishes everything queued (up to the maximum batch) goes
next as one batch. So batches stay at one row at low load and grow by themselves under load,
as Triton's dynamic batcher does with ``max_queue_delay`` at zero.

Everything here runs on the event loop's thread except the batch itself, which runs in the
batcher's own worker thread (ONNX Runtime releases the GIL while it computes, so the loop keeps
parsing requests meanwhile). Nothing polls: the loop sleeps in ``epoll`` when idle.

One exception, measured: handing a batch to a thread and back costs ~70 µs (p50; p99 ~270
µs) on the CI machine, more than a one-row batch of a small model computes (~45 µs). A batch
predicted to take less than :attr:`BatcherConfig.inline_s` therefore runs on the loop's
thread: 0.1 ms by default, or 1 ms when the process has one core (a thread could not run beside
the loop there anyway, it would only add switches). After an inline batch the loop answers
I/O before the next one, so new arrivals join it.

The maximum batch and the expected batch time come from :class:`CostModel`, a line
t(n) = a·n + b fitted to the batches actually run (warm-up seeds it). There are two such
lines. One learns each batch's wall time as a deadline sees it, hand-offs and a busy loop
included; it gives what follows. The other learns only the compute, and decides whether a batch
runs inline: a worker batch's wall time includes the wait until the loop, busy reading
requests, gets round to it (3 ms at 64 connections here, whatever the batch), so a line of
wall times, once above ``inline_s``, kept every batch on the worker and never learned
otherwise (measured on one core: two logging GBDT servers in five got stuck so, their hand-offs
costing up to 11 µs a request; none in six since the split).
The wall-time line gives:

* admission: the predicted wait of a new request (the running batch's remainder plus the
  queued rows, in maximum-size batches); a request that could not finish before its deadline
  is refused at once (:class:`OverloadedError`, HTTP 429 with ``Retry-After``);
* expiry: a queued request whose deadline would pass before its batch ends is dropped, not
  computed (:class:`DeadlineExceededError`, HTTP 504);
* the maximum batch: the most rows one batch may take within an eighth of the default
  deadline, so that a request arriving just after a batch starts still has most of its
  deadline left. Below that cap a batch takes everything queued: the fuller the queue, the
  more the fixed cost b is worth sharing.

Requests larger than the maximum are split into chunks that run in consecutive batches; the
chunks' outputs are joined back in order before the caller's future resolves.

A request may carry a tag (the server gives the request id of those it logs). After a batch,
:attr:`Batcher.on_answered` is told the batch's feed and outputs and where each tagged request
it answered sits in them: the prediction log keeps a batch's arrays, not a copy per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.errors import TandemError, UsageError
from tandem.ledger.hardware import usable_cores

__all__ = [
    "Batcher",
    "BatcherConfig",
    "CostModel",
    "DeadlineExceededError",
    "OverloadedError",
    "RowsError",
    "TooLargeError",
]

log = logging.getLogger("tandem.serving")

#: share of a request's remaining time that admission keeps in reserve. 0.25 let a request
#: through now and then whose wait then ran past its deadline when the machine slowed by a
#: few per cent mid-run (one 504 in ~20 overload-test runs); the queue stays long enough to
#: keep the model busy either way, so goodput does not pay for the margin
ADMISSION_MARGIN = 0.35
#: a queued request is expired (504, not computed) when its deadline has passed, or when its
#: batch is predicted to end more than this after it: a prediction some ms over is within the
#: noise of the cost model, and an answer a few ms late serves a client better than none
EXPIRY_GRACE_S = 0.05

#: A request's input: graph-input name -> array whose LAST axis is the row axis (the
#: Predictor's column-major feed; other axes may differ between requests, see ``_concat``);
#: outputs come back as name -> array with rows on axis 0.
Feed = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]
#: Runs one batch: a feed of n rows in, n rows of every output out.
Compute = Callable[[Feed], Outputs]
#: Told of answered tagged requests: a feed, its outputs, and (tag, first row, rows) of each
#: tagged request answered from them, in row order.
Answered = Callable[[Feed, Outputs, list[tuple[str, int, int]]], None]


class OverloadedError(TandemError):
    """The queue is too long for this request to finish before its deadline (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(TandemError):
    """The request's deadline passed while it waited; it was not computed (HTTP 504)."""


class RowsError(UsageError):
    """The model could not run on this request's rows (HTTP 400); other requests are unharmed."""


class TooLargeError(UsageError):
    """A request no wait could ever admit: more rows than the queue holds (HTTP 413), or more
    compute than its own deadline allows (HTTP 400). Retrying as is cannot succeed."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


#: a batch time over this many times the cost model's prediction is taken as this bound
OUTLIER = 4.0


class CostModel:
    """t(n) = a·n + b, fitted to observed batch times.

    Observations go to buckets by size (1, 2-3, 4-7, ...); each bucket keeps an exponentially
    weighted mean of its sizes and times, and the line is fitted across the buckets with equal
    weight. So a long quiet spell of one-row batches refreshes what one row costs without
    erasing what the warm-up and busier times taught about large batches (a single pooled
    fit would drift to b = 0, conclude batching gains nothing, and never batch again).

    Example:
        >>> cost = CostModel()
        >>> for n, t in [(1, 0.0011), (10, 0.002), (100, 0.011)]:
        ...     cost.observe(n, t)
        >>> round(cost.per_row * 1e6), round(cost.fixed * 1e6)
        (100, 1000)
    """

    def __init__(self, *, smoothing: float = 0.1) -> None:
        self._alpha = smoothing
        #: bucket -> [mean rows, mean seconds]
        self._buckets: dict[int, list[float]] = {}
        self._pending = 0  # observations since the last fit
        self.per_row = 0.0  # a, seconds
        self.fixed = 0.0  # b, seconds

    @property
    def observed(self) -> bool:
        return bool(self._buckets)

    def observe(self, rows: int, seconds: float) -> bool:
        """Add one batch; True when the line was refitted (on a new bucket, else every 8th).

        A time over :data:`OUTLIER` times the current prediction counts as that bound: a batch
        the OS or another thread held up says nothing about the model, and a rare size's bucket
        keeps what it is first told for a long while (one 5 ms time, a GIL wait, among 0.3 ms
        batches tilted the line flat). A model that really slowed down is still learned, the
        bound rising with each batch."""
        if rows < 1:
            return False
        if self._buckets:
            seconds = min(seconds, OUTLIER * self.predict(rows))
        key = rows.bit_length()
        bucket = self._buckets.get(key)
        self._pending += 1
        if bucket is None:
            self._buckets[key] = [float(rows), seconds]
        else:
            bucket[0] += self._alpha * (rows - bucket[0])
            bucket[1] += self._alpha * (seconds - bucket[1])
            if self._pending < 8:
                return False
        self._pending = 0
        self._fit()
        return True

    def _fit(self) -> None:
        points = list(self._buckets.values())
        k = len(points)
        mean_n = sum(p[0] for p in points) / k
        mean_t = sum(p[1] for p in points) / k
        var_n = sum((p[0] - mean_n) ** 2 for p in points)
        if k > 1 and var_n > 0:
            slope = sum((p[0] - mean_n) * (p[1] - mean_t) for p in points) / var_n
        else:  # one batch size seen so far: all of the time is per row
            slope = mean_t / mean_n
        # noise can tilt the line below zero at either end; time is never negative
        self.per_row = max(slope, 1e-9)
        self.fixed = max(mean_t - self.per_row * mean_n, 0.0)

    def predict(self, rows: int) -> float:
        """Expected seconds for one batch of ``rows`` rows."""
        return self.per_row * rows + self.fixed

    def drain_time(self, rows: int, max_batch: int) -> float:
        """Expected seconds to run ``rows`` queued rows in batches of at most ``max_batch``."""
        full, rest = divmod(rows, max_batch)
        return full * self.predict(max_batch) + (self.predict(rest) if rest else 0.0)

    def best_batch(self, budget_s: float, *, limit: int) -> int:
        """The most rows one batch can take in ``budget_s`` seconds (at least 1, at most
        ``limit``)."""
        if not self.observed:
            return 1
        affordable = math.floor((budget_s - self.fixed) / self.per_row)
        return max(1, min(affordable, limit))


@dataclass(frozen=True)
class BatcherConfig:
    """Settings a user may override; the defaults need no tuning.

    Attributes:
        timeout_s: the default deadline of a request, from its arrival.
        max_batch: rows per batch; None learns it from the cost model.
        max_queue_rows: hard bound on queued rows, whatever the deadlines.
        max_batch_limit: the learnt maximum never exceeds this. Larger batches ran slower per
            row here (a 1024-wide MLP: 39 µs a row at ~3-4k rows against 32 at ~800, caches),
            and with 1024 the overload test's goodput fell to 0.80-0.89 of capacity; with 256
            it held above 0.9 while the fixed cost of a small model is already amortized.
        inline_s: batches predicted to take less run on the event loop's thread (None: 0.1 ms,
            or 1 ms when this process may use one core only).
    """

    timeout_s: float = 1.0
    max_batch: int | None = None
    max_queue_rows: int = 65_536
    max_batch_limit: int = 256
    inline_s: float | None = None

    def __post_init__(self) -> None:
        from tandem.errors import ConfigError

        if not self.timeout_s > 0:
            raise ConfigError(f"the default timeout must be positive; got {self.timeout_s} s")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"max batch must be at least 1 row; got {self.max_batch}")
        if self.max_queue_rows < 1:
            raise ConfigError(f"max queue rows must be at least 1; got {self.max_queue_rows}")


@dataclass(eq=False)
class _Request:
    feed: Feed
    rows: int
    deadline: float  # time.monotonic()
    future: asyncio.Future[Outputs]
    enqueued: float
    predicted_wait: float = 0.0  # the cost model's wait for it at admission, before scaling
    done: int = 0  # rows already handed to a batch
    parts: list[Outputs] = field(default_factory=list)
    failed: bool = False
    tag: str | None = None


@dataclass(frozen=True)
class _Chunk:
    request: _Request
    start: int
    stop: int


class Batcher:
    """One model's queue and executor.

    Example:
        >>> async def main(batcher: Batcher) -> None:  # doctest: +SKIP
        ...     outputs = await batcher.submit({"numeric": np.zeros((32, 5))}, rows=5)
    """

    def __init__(
        self,
        compute: Compute,
        config: BatcherConfig | None = None,
        *,
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.config = config or BatcherConfig()
        #: batch wall times, for deadlines, admission and the maximum batch
        self.cost = CostModel()
        #: batch compute times alone, for the choice to run a batch inline (see the module doc)
        self.compute_cost = CostModel()
        self.name = name
        self._compute = compute
        self._on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._running_rows = 0
        self._running_since = 0.0
        self._busy = False
        self._closed = False
        self._idle: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"tandem-{name}")
        self._max_batch = self.config.max_batch or 1
        #: told of each batch's tagged requests once they are answered (see the module doc)
        self.on_answered: Answered | None = None
        #: how much longer queued requests really waited than predicted (EWMA, >= 1): the
        #: cost model times batches, not what the event loop does between them
        self._wait_scale = 1.0
        inline = self.config.inline_s
        self.inline_s: float = (
            inline if inline is not None else (0.001 if usable_cores() == 1 else 0.0001)
        )

    # -- facts for admission, metrics and tests ------------------------------------------------

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def _record(self, rows: int, seconds: float, compute_s: float | None = None) -> None:
        """A batch that ran: teach the cost models, tell the metrics."""
        self.observe(rows, seconds, compute_s)
        if self._on_batch is not None:
            self._on_batch(rows, seconds)

    def observe(self, rows: int, seconds: float, compute_s: float | None = None) -> None:
        """Teach the cost models one batch: ``seconds`` as a deadline saw it, ``compute_s``
        the part spent computing (None: all of it, as for a batch run inline and in warm-up,
        which calls this too)."""
        self.compute_cost.observe(rows, seconds if compute_s is None else compute_s)
        if self.cost.observe(rows, seconds) and self.config.max_batch is None:
            budget = self.config.timeout_s / 8
            self._max_batch = self.cost.best_batch(budget, limit=self.config.max_batch_limit)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def predicted_wait(self, now: float | None = None) -> float:
        """Seconds until a request arriving now would start: the running batch's remainder
        plus the queued rows, run in maximum-size batches."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        if self._busy:
            wait = max(0.0, self._running_since + self.cost.predict(self._running_rows) - now)
        if self._queued_rows:
            wait += self.cost.drain_time(self._queued_rows, self.max_batch)
        return wait * self._wait_scale

    def admit(self, rows: int, deadline: float, now: float | None = None) -> float:
        """Raise :class:`OverloadedError` unless ``rows`` more rows can finish by ``deadline``;
        returns the predicted wait before they start."""
        now = time.monotonic() if now is None else now
        if self._closed:
            raise OverloadedError(f"model {self.name} is shutting down; retry shortly", 1.0)
        if rows > self.config.max_queue_rows:
            raise TooLargeError(
                f"the request has {rows} rows; model {self.name} queues at most "
                f"{self.config.max_queue_rows}: split it into smaller requests",
                413,
            )
        alone = self.cost.drain_time(rows, self.max_batch)
        if now + alone > deadline:
            raise TooLargeError(
                f"the request's {rows} rows need about {alone * 1e3:.0f} ms of compute on an idle "
                f"model, more than its {max(0.0, deadline - now) * 1e3:.0f} ms deadline allows: "
                "allow a longer timeout_ms or send fewer rows",
                400,
            )
        if self._queued_rows + rows > self.config.max_queue_rows:
            raise OverloadedError(
                f"the queue of model {self.name} is full ({self._queued_rows} rows waiting); "
                "retry later or send fewer rows",
                self.predicted_wait(now),
            )
        wait = self.predicted_wait(now)
        done = wait + alone
        # a share of the time left is kept as margin: predictions are means, and a request
        # admitted on a bet that exactly breaks even is one that expires in the queue
        if now + done > deadline - ADMISSION_MARGIN * (deadline - now):
            budget_ms = max(0.0, (deadline - now) * 1e3)
            raise OverloadedError(
                f"model {self.name} is at capacity: the predicted wait {wait * 1e3:.0f} ms plus "
                f"compute exceeds this request's {budget_ms:.0f} ms deadline; retry after the "
                "Retry-After delay or allow a longer timeout_ms",
                wait,
            )
        return wait

    # -- the queue -------------------------------------------------------------------------------

    def run_now(
        self, feed: Feed, rows: int, *, deadline: float | None = None, tag: str | None = None
    ) -> Outputs | None:
        """The inline path without a queue: when the model is idle, nothing waits and the batch
        is predicted to take under :attr:`inline_s`, compute ``rows`` now on this thread and
        return their outputs; otherwise None (then :meth:`submit`). Saves the future, the queue
        entry and the slicing a one-request batch does not need.

        Raises:
            RowsError: when the model cannot run on these rows.
        """
        if self._busy or self._queue or self._closed or not 0 < rows <= self._max_batch:
            return None
        if rows > self.config.max_queue_rows:
            return None  # submit refuses it, as it would on a busy model
        predicted = self.compute_cost.predict(rows)
        if predicted >= self.inline_s or (
            deadline is not None and time.monotonic() + predicted > deadline
        ):
            return None
        started = time.perf_counter()
        try:
            outputs = self._compute(feed)
        except Exception as exc:
            raise _as_rows_error(exc) from None
        self._record(rows, time.perf_counter() - started)
        if tag is not None:
            self._answered(feed, outputs, [(tag, 0, rows)])
        # as after any inline batch: what arrives during this loop turn queues, and goes
        # together once the loop has read it
        self._busy = True
        asyncio.get_running_loop().call_soon(self._next)
        return outputs

    def submit(
        self, feed: Feed, rows: int, *, deadline: float | None = None, tag: str | None = None
    ) -> asyncio.Future[Outputs]:
        """Queue ``rows`` rows; the future resolves to their outputs, rows in order.

        Raises:
            OverloadedError: at once, when the request could not finish before its deadline.
        """
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.config.timeout_s
        wait = self.admit(rows, deadline, now)
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        if rows == 0:
            future.set_result({})
            return future
        self._queue.append(
            _Request(feed, rows, deadline, future, now, wait / self._wait_scale, tag=tag)
        )
        self._queued_rows += rows
        if not self._busy:
            self._dispatch()
        return future

    def _dispatch(self) -> None:
        """Start the next batch from the queue's head (called when the executor is free).

        The batch grows from the head, in arrival order, while (1) there is room, (2) adding
        the next request's rows would not make any request already in the batch miss its
        deadline, and (3) that request itself can finish in time; one that cannot (even as
        the batch's last member, even alone later: a later batch ends later still) expires
        here, not computed.
        """
        chunks: list[_Chunk] = []
        limit = self._max_batch
        rows = 0
        now = time.monotonic()
        earliest = math.inf  # the earliest deadline among the batch's requests
        queue = self._queue
        cost = self.cost
        while queue and rows < limit:
            request = queue[0]
            if request.future.done():  # the caller went away
                self._drop(request)
                continue
            left = request.rows - request.done
            take = min(limit - rows, left)
            ends = now + cost.predict(rows + take)
            if chunks and ends > earliest:
                break  # more rows would make a request already in this batch late
            finishes = ends + (cost.drain_time(left - take, limit) if take < left else 0.0)
            if now >= request.deadline or finishes > request.deadline + EXPIRY_GRACE_S:
                self._expire(request, now)
                continue
            earliest = min(earliest, request.deadline)
            if request.done == 0 and request.predicted_wait > 0.001:
                ratio = (now - request.enqueued) / request.predicted_wait
                self._wait_scale += 0.05 * (min(max(ratio, 1.0), 3.0) - self._wait_scale)
            chunks.append(_Chunk(request, request.done, request.done + take))
            request.done += take
            rows += take
            self._queued_rows -= take
            if request.done == request.rows:
                queue.popleft()
        if not chunks:
            self._busy = False
            if self._idle is not None:
                self._idle.set()
            return
        self._busy = True
        self._running_rows = rows
        self._running_since = now
        loop = asyncio.get_running_loop()
        if self.compute_cost.predict(rows) < self.inline_s:
            outputs, seconds, feed = self._run(chunks)
            self._complete(chunks, outputs, seconds, feed, None)
            # answer I/O before the next batch, so that what arrived meanwhile joins it
            loop.call_soon(self._next)
            return
        started = time.perf_counter()
        work = loop.run_in_executor(self._executor, self._run, chunks)
        work.add_done_callback(lambda f: self._finished(chunks, f, started))

    def _expire(self, request: _Request, now: float) -> None:
        self._drop(request)
        if not request.future.done():
            waited = (now - request.enqueued) * 1e3
            request.future.set_exception(
                DeadlineExceededError(
                    f"the request could not finish within its deadline after {waited:.0f} ms in "
                    f"the queue of model {self.name}; it was not computed: retry, or allow a "
                    "longer timeout_ms"
                )
            )

    def _drop(self, request: _Request) -> None:
        self._queue.remove(request)
        self._queued_rows -= request.rows - request.done
        request.done = request.rows

    def _run(self, chunks: list[_Chunk]) -> tuple[Outputs | list[Outputs | Exception], float, Feed]:
        """In the worker thread: join the chunks' feeds, run once, time it."""
        started = time.perf_counter()
        feed = _join(chunks)
        try:
            outputs: Outputs | list[Outputs | Exception] = self._compute(feed)
        except Exception as exc:
            # one request: the failure is its own, no need to run it again to know; several:
            # one bad request must not fail its batch-mates, so each runs alone
            outputs = [exc] if len(chunks) == 1 else [_attempt(self._compute, [c]) for c in chunks]
        return outputs, time.perf_counter() - started, feed

    def _finished(self, chunks: list[_Chunk], work: asyncio.Future[Any], started: float) -> None:
        feed: Feed = {}
        compute_s = None
        try:
            outputs, compute_s, feed = work.result()
        except BaseException as exc:  # the executor itself failed: fail the batch, go on
            outputs = [exc] * len(chunks)
        # what a deadline sees is the batch's wall time, hand-offs and a shared core included;
        # what running it inline would cost is the time inside the thread
        self._complete(chunks, outputs, time.perf_counter() - started, feed, compute_s)
        self._next()

    def _next(self) -> None:
        self._busy = False
        if self._queue:
            self._dispatch()
        elif self._idle is not None:
            self._idle.set()

    def _complete(
        self,
        chunks: list[_Chunk],
        outputs: Outputs | list[Outputs | Exception],
        seconds: float,
        feed: Feed,
        compute_s: float | None,
    ) -> None:
        try:
            self._deliver_all(chunks, outputs, seconds, feed, compute_s)
        except Exception as exc:  # never leave a caller waiting, nor the batcher busy
            for c in chunks:
                if not c.request.future.done():
                    c.request.future.set_exception(_as_rows_error(exc))

    def _deliver_all(
        self,
        chunks: list[_Chunk],
        outputs: Outputs | list[Outputs | Exception],
        seconds: float,
        feed: Feed,
        compute_s: float | None,
    ) -> None:
        if isinstance(outputs, dict):
            offset = 0
            tagged: list[tuple[str, int, int]] = []  # answered whole by this batch
            for c in chunks:
                n = c.stop - c.start
                done = self._deliver(c, {k: v[offset : offset + n] for k, v in outputs.items()})
                tag = c.request.tag
                if done is not None and tag is not None:
                    if c.start == 0:
                        tagged.append((tag, offset, n))
                    else:  # its first chunks ran in earlier batches
                        self._answered_whole(c.request, done)
                offset += n
            self._record(offset, seconds, compute_s)
            if tagged:
                self._answered(feed, outputs, tagged)
        else:  # failed batches teach the cost model nothing
            for c, out in zip(chunks, outputs, strict=True):
                done = self._deliver(c, out)
                if done is not None and c.request.tag is not None:
                    self._answered_whole(c.request, done)
            if self._on_batch is not None:
                self._on_batch(sum(c.stop - c.start for c in chunks), seconds)

    def _answered(self, feed: Feed, outputs: Outputs, tagged: list[tuple[str, int, int]]) -> None:
        """Tell :attr:`on_answered`; its failure is its own, never the requests'."""
        if self.on_answered is None:
            return
        try:
            self.on_answered(feed, outputs, tagged)
        except Exception:
            log.exception("model %s: the hook told of answered requests failed", self.name)

    def _answered_whole(self, request: _Request, outputs: Outputs) -> None:
        """A tagged request answered outside one batch's arrays: its own feed and outputs."""
        assert request.tag is not None
        self._answered(request.feed, outputs, [(request.tag, 0, request.rows)])

    def _deliver(self, chunk: _Chunk, outputs: Outputs | BaseException) -> Outputs | None:
        """Hand a chunk's outputs (or failure) to its request; its whole outputs when this
        chunk completed it, else None."""
        request = chunk.request
        if request.failed or request.future.done():
            return None
        if isinstance(outputs, BaseException):
            request.failed = True
            if request.done < request.rows:  # its later chunks are still queued
                self._drop(request)
            request.future.set_exception(_as_rows_error(outputs))
            return None
        request.parts.append(outputs)
        if chunk.stop != request.rows:
            return None
        parts = request.parts
        joined = (
            parts[0]
            if len(parts) == 1
            else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        )
        request.future.set_result(joined)
        return joined

    # -- shutdown --------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Refuse new requests and wait until every queued one has been answered."""
        self._closed = True
        while self._busy or self._queue:
            self._idle = asyncio.Event()
            await self._idle.wait()
        self._executor.shutdown(wait=False)

    def close(self) -> None:
        """Stop at once: queued requests are left unanswered (use :meth:`drain` to finish them)."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


def _join(chunks: list[_Chunk]) -> Feed:
    if len(chunks) == 1:
        c = chunks[0]
        r = c.request
        if c.start == 0 and c.stop == r.rows:
            return r.feed
        return {k: v[..., c.start : c.stop] for k, v in r.feed.items()}
    names = chunks[0].request.feed.keys()
    return {k: _concat([c.request.feed[k][..., c.start : c.stop] for c in chunks]) for k in names}


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """Join parts along the row axis (the last); parts whose other axes differ (images of
    other sizes, texts of other lengths) are zero-padded to the largest first, which the
    graph ignores: each image carries its size, each text its attention mask."""
    lead = {p.shape[:-1] for p in parts}
    if len(lead) > 1:
        shape = tuple(max(dims) for dims in zip(*lead, strict=True))
        parts = [
            np.pad(p, [(0, m - d) for m, d in zip(shape, p.shape[:-1], strict=True)] + [(0, 0)])
            for p in parts
        ]
    return np.concatenate(parts, axis=-1)


def _attempt(compute: Compute, chunks: list[_Chunk]) -> Outputs | Exception:
    try:
        return compute(_join(chunks))
    except Exception as exc:
        return exc


def _as_rows_error(exc: BaseException) -> BaseException:
    if isinstance(exc, TandemError):
        return exc
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RowsError(f"the model could not run on these rows: {first}")
