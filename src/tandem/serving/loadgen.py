"""A small HTTP/1.1 load generator: asyncio over raw keep-alive sockets, run as a subprocess.

    python -m tandem.serving.loadgen --url http://127.0.0.1:PORT/v2/models/m/infer \\
        --rate 400 --duration 5 --connections 256 --body-file body.json [--closed]

Open loop (the default): request i is due at ``start + i / rate`` whatever the answers, and
goes out on an idle connection of the pool of ``--connections``; when none is idle it is not
sent and counts as ``client_dropped`` (give enough connections: rate x worst latency). Its
latency runs from when it was due, so a late send is not hidden (no coordinated omission).
Closed loop (``--closed``): each connection sends back to back for ``--duration`` seconds;
latency runs from the send.

Bounded: nothing is sent after ``--duration`` (or after SIGINT/SIGTERM, which end the sending
early: rates then count the shorter window); answers still missing ``--grace`` seconds later
are abandoned (``unfinished``) and every socket is closed, so the process exits by
duration + grace (+ the connect time, itself bounded by ``--grace``).

With ``--window S`` it also prints, every S seconds while it runs, a JSON line with that
window's figures (see :func:`_windows`); the summary is always the last line. Prints on
stdout::

    {"mode": "open", "duration_s": 5.0, "due": 2000, "sent": 2000, "client_dropped": 0,
     "max_send_lag_ms": 1.2,
     "completed": 2000, "errors": 0, "unfinished": 0, "status": {"200": 1500, "429": 500},
     "latency_ms": {"200": {"n": 1500, "p50": 41.0, "p99": 380.2, "max": 421.7}, ...},
     "send_rate": 400.0, "goodput": 300.0, "missing_retry_after": 0, "headers": {...}}

``goodput`` is 200s per second of ``duration_s``; ``missing_retry_after`` counts 429s without
a ``Retry-After`` header. With ``--track-header NAME`` (repeatable), ``headers[NAME]`` gives,
per connection, the header's values in the order received with repeats collapsed (e.g.
``[["m:1", "m:2"], ...]``), which shows a switch and whether it ever went back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import urllib.parse
from collections import defaultdict, deque
from pathlib import Path
from typing import Any


class Connection:
    """One keep-alive HTTP/1.1 connection sending the same request."""

    def __init__(self, index: int, host: str, port: int, request: bytes, track: list[str]) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.request = request
        self.track = track
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        #: per tracked header: the values seen, repeats collapsed
        self.runs: dict[str, list[str]] = {name: [] for name in track}

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self) -> tuple[int, dict[str, str]]:
        """Send the request, read the answer; returns (status, headers in lower case)."""
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length:
            await self.reader.readexactly(length)
        if headers.get("connection", "").lower() == "close":
            self.close()
        for name in self.track:
            value = headers.get(name, "")
            runs = self.runs[name]
            if not runs or runs[-1] != value:
                runs.append(value)
        return status, headers


class Stats:
    def __init__(self) -> None:
        self.latencies: dict[int, list[float]] = defaultdict(list)
        self.errors = 0
        self.client_dropped = 0
        self.sent = 0
        self.missing_retry_after = 0
        self.error_kinds: dict[str, int] = defaultdict(int)
        self.max_send_lag = 0.0
        #: set by SIGINT/SIGTERM: stop sending
        self.stop = asyncio.Event()

        #: this window's answers: (status, latency seconds); see :func:`_windows`
        self.window: list[tuple[int, float]] = []
        self.windows: list[dict[str, Any]] = []

    def record(self, status: int, headers: dict[str, str], seconds: float) -> None:
        self.latencies[status].append(seconds)
        self.window.append((status, seconds))
        if status == 429 and "retry-after" not in headers:
            self.missing_retry_after += 1

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        self.error_kinds[type(exc).__name__] += 1


async def _windows(stats: Stats, seconds: float, duration: float) -> None:
    """Print ``{"started": true}``, then every ``seconds`` of the ``duration`` the answers that
    arrived in the window just ended as one JSON line, so that a caller can watch the figures
    settle and stop the run (SIGINT) once they have: ``{"window": k, "ok": n, "other": n,
    "errors": n, "dropped": n, "goodput": per s, "p50_ms", "p99_ms"}`` (latencies of the
    200s; ``dropped``: due requests with no idle connection)."""
    started = time.monotonic()
    errors, dropped = stats.errors, stats.client_dropped  # connect failures are not window 1's
    sys.stdout.write(json.dumps({"started": True}) + "\n")  # window 1 starts now
    sys.stdout.flush()
    k = 0
    while (k + 1) * seconds <= duration + 1e-9:  # whole windows of the sending only
        k += 1
        await asyncio.sleep(max(0.0, started + k * seconds - time.monotonic()))
        answers, stats.window = stats.window, []
        ok = [t for status, t in answers if status == 200]
        line = {
            "window": k,
            "ok": len(ok),
            "other": len(answers) - len(ok),
            "errors": stats.errors - errors,
            "dropped": stats.client_dropped - dropped,
            "goodput": round(len(ok) / seconds, 2),
            "p50_ms": round(percentile(ok, 50) * 1e3, 3) if ok else None,
            "p99_ms": round(percentile(ok, 99) * 1e3, 3) if ok else None,
        }
        errors, dropped = stats.errors, stats.client_dropped
        stats.windows.append(line)
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def open_loop(
    conns: list[Connection], rate: float, duration: float, grace: float, stats: Stats
) -> int:
    idle = deque(conns)
    tasks: set[asyncio.Task[None]] = set()

    async def fire(conn: Connection, due: float) -> None:
        try:
            status, headers = await conn.send()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            stats.error(exc)
            conn.close()  # reconnects on its next send
        else:
            stats.record(status, headers, time.monotonic() - due)
        idle.append(conn)

    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    start = time.monotonic()
    i = 0
    while i < total and not stats.stop.is_set():
        now = time.monotonic()
        due_now = min(total, int((now - start) * rate) + 1)
        while i < due_now:
            due = start + i / rate
            i += 1
            if not idle:
                stats.client_dropped += 1
                continue
            stats.max_send_lag = max(stats.max_send_lag, now - due)
            stats.sent += 1
            task = loop.create_task(fire(idle.popleft(), due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
    return await _finish(tasks, grace)


async def closed_loop(conns: list[Connection], duration: float, grace: float, stats: Stats) -> int:
    end = time.monotonic() + duration

    async def worker(conn: Connection) -> None:
        while time.monotonic() < end and not stats.stop.is_set():
            stats.sent += 1
            t0 = time.monotonic()
            try:
                status, headers = await conn.send()
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                stats.error(exc)
                conn.close()
                await asyncio.sleep(0.01)
            else:
                stats.record(status, headers, time.monotonic() - t0)

    loop = asyncio.get_running_loop()
    tasks = {loop.create_task(worker(c)) for c in conns}
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stats.stop.wait(), duration)
    return await _finish(tasks, grace)


async def _finish(tasks: set[asyncio.Task[None]], grace: float) -> int:
    """Wait up to ``grace`` for what is in flight; cancel the rest; return how many were."""
    pending: set[asyncio.Task[None]] = set(tasks)
    if pending:
        _, pending = await asyncio.wait(pending, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    return len(pending)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = urllib.parse.urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    target = url.path + (f"?{url.query}" if url.query else "")
    body = Path(args.body_file).read_bytes() if args.body_file else b""
    method = args.method or ("POST" if body else "GET")
    head = f"{method} {target} HTTP/1.1\r\nhost: {host}:{port}\r\n"
    if body:
        head += f"content-type: {args.content_type}\r\ncontent-length: {len(body)}\r\n"
    request = head.encode("latin-1") + b"\r\n" + body
    conns = [Connection(i, host, port, request, args.track_header) for i in range(args.connections)]
    stats = Stats()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stats.stop.set)
    elapsed = 0.0
    try:
        # connect up front (bounded), so the run measures requests, not handshakes
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(c.connect() for c in conns), return_exceptions=True), args.grace
            )
        except TimeoutError as exc:  # those not connected yet connect on their first send
            results = [exc]
        for r in results:
            if isinstance(r, BaseException):
                stats.error(r)
        started = time.monotonic()
        stopped: list[float] = []
        stop_waiter = loop.create_task(stats.stop.wait())
        stop_waiter.add_done_callback(
            lambda f: None if f.cancelled() else stopped.append(time.monotonic())
        )
        ticker = (
            loop.create_task(_windows(stats, args.window, args.duration)) if args.window else None
        )
        if args.closed:
            unfinished = await closed_loop(conns, args.duration, args.grace, stats)
        else:
            unfinished = await open_loop(conns, args.rate, args.duration, args.grace, stats)
        elapsed = time.monotonic() - started
        stop_waiter.cancel()
        if ticker is not None:
            ticker.cancel()
    finally:
        for c in conns:
            c.close()
    # the sending window: the whole duration, or up to the signal that ended it
    window = min(args.duration, stopped[0] - started) if stopped else args.duration
    completed = sum(len(v) for v in stats.latencies.values())
    return {
        "mode": "closed" if args.closed else "open",
        "duration_s": round(window, 3),
        "elapsed_s": round(elapsed, 3),
        "connections": args.connections,
        "due": None if args.closed else int(args.rate * args.duration),
        "sent": stats.sent,
        "client_dropped": stats.client_dropped,
        "max_send_lag_ms": round(stats.max_send_lag * 1e3, 3),
        "completed": completed,
        "errors": stats.errors,
        "error_kinds": dict(stats.error_kinds),
        "unfinished": unfinished,
        "status": {str(k): len(v) for k, v in sorted(stats.latencies.items())},
        "latency_ms": {
            str(k): {
                "n": len(v),
                "p50": round(percentile(v, 50) * 1e3, 3),
                "p99": round(percentile(v, 99) * 1e3, 3),
                "max": round(max(v) * 1e3, 3),
            }
            for k, v in sorted(stats.latencies.items())
        },
        "send_rate": round(stats.sent / window, 2),
        "goodput": round(len(stats.latencies.get(200, [])) / window, 2),
        "missing_retry_after": stats.missing_retry_after,
        "headers": {name: [c.runs[name] for c in conns] for name in args.track_header},
        "windows": stats.windows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s (open loop)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of sending")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--body-file", help="request body (POST); none: GET")
    parser.add_argument("--method")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--closed", action="store_true", help="closed loop, back to back")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds to wait at the end")
    parser.add_argument("--track-header", action="append", default=[], metavar="NAME")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument(
        "--window", type=float, default=0.0, help="print figures every this many seconds"
    )
    args = parser.parse_args(argv)
    args.track_header = [h.lower() for h in args.track_header]
    if args.connections < 1 or args.duration <= 0 or (not args.closed and args.rate <= 0):
        parser.error("connections, duration and rate must be positive")
    if args.window < 0:
        parser.error("--window must be >= 0 seconds")
    runner: Any = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    result = runner(run(args))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
