"""A small closed-loop HTTP load generator: ``concurrency`` keep-alive connections, each
sending its next request as soon as the previous answer arrives.

Used by ``tandem demo`` to measure the real-time stage; the benchmarks use wrk (a C load
generator) instead, so that the client's own cost does not cap the figures.
:func:`announced_port` waits for a ``tandem serve`` subprocess to say where it listens.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["LoadResult", "announced_port", "closed_loop"]


@dataclass
class LoadResult:
    seconds: float = 0.0
    #: per request, in the order answers arrived: (status, latency seconds, body)
    answers: list[tuple[int, float, bytes]] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return len(self.answers) / self.seconds if self.seconds else 0.0

    def latency_quantile(self, q: float) -> float:
        ordered = sorted(a[1] for a in self.answers)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _connection(
    host: str,
    port: int,
    requests: list[tuple[int, bytes]],
    result: dict[int, tuple[int, float, bytes]],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for index, raw in requests:
            started = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            result[index] = (status, time.perf_counter() - started, body)
    finally:
        writer.close()


def closed_loop(
    host: str, port: int, path: str, bodies: Sequence[bytes], *, concurrency: int = 8,
    content_type: str = "application/json", request_ids: Sequence[str] | None = None,
) -> LoadResult:  # fmt: skip
    """POST every body once to ``path``, ``concurrency`` at a time; answers in body order.
    ``request_ids``: an ``X-Request-Id`` for each body (the prediction log keeps it)."""
    ids = [b"x-request-id: %s\r\n" % r.encode() for r in request_ids or ()] or [b""] * len(bodies)
    raws = [
        b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: %s\r\n%scontent-length: %d\r\n\r\n%s"
        % (path.encode(), host.encode(), content_type.encode(), rid, len(b), b)
        for b, rid in zip(bodies, ids, strict=True)
    ]
    lanes: list[list[tuple[int, bytes]]] = [[] for _ in range(concurrency)]
    for i, raw in enumerate(raws):
        lanes[i % concurrency].append((i, raw))
    answers: dict[int, tuple[int, float, bytes]] = {}

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(_connection(host, port, lane, answers) for lane in lanes if lane))
        return time.perf_counter() - started

    seconds = asyncio.run(main())
    return LoadResult(seconds, [answers[i] for i in range(len(bodies))])


def announced_port(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    """The port `tandem serve` announces on stderr once it is ready."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(r"on http://127\.0\.0\.1:(\d+) \(ready", line)
        if found:
            # keep reading what the server logs, so that a full pipe never blocks it
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return int(found.group(1))
    raise RuntimeError("tandem serve did not become ready: " + "".join(seen[-5:]).strip())
