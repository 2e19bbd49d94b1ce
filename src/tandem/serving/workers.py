"""``tandem serve --processes N``: N server processes accepting on one port.

One Python process serves from one event loop under one GIL, so past a core's worth of HTTP
and Python work, more cores only help through more processes. The supervisor (the process the
user started) binds and listens once and hands the listening socket to N worker processes
(``python -m tandem.serving.workers``, the socket's descriptor inherited); each worker runs
an ordinary :class:`~tandem.serving.server.Server` accepting on it, and the kernel gives each
new connection to whichever worker accepts first (an idle one, usually). This is the pre-fork
model of gunicorn and ``uvicorn --workers``; it needs no proxy and no port per worker.

What each worker needs (the references and options, the API key among them) travels on its
stdin as JSON, never on the command line, where ``ps`` would show the key. A worker tells it
is ready by writing one byte to a pipe; the supervisor announces the port once all are.
A worker that dies after start-up is replaced (at most :data:`MAX_RESTARTS` times a minute,
then the supervisor stops everything); one that fails during start-up stops the whole server
with its error, since its siblings would fail the same way. SIGINT or SIGTERM to the
supervisor stops the workers, each finishing what it has in flight.

Each worker records its own usage for the ledger; ``/metrics`` answers from whichever worker
takes the connection, so scrape each process's counters through the ledger, not /metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from tandem.errors import UsageError
from tandem.monitoring.predictions import LogOptions
from tandem.serving.batcher import BatcherConfig
from tandem.serving.server import ServeOptions, cannot_listen

__all__ = ["MAX_RESTARTS", "die_with_parent", "serve_processes"]

log = logging.getLogger("tandem.serving")

#: replacements of crashed workers allowed in any 60 s before the supervisor gives up
MAX_RESTARTS = 5


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise cannot_listen(host, port, exc) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Worker:
    def __init__(self, index: int, spec: dict[str, Any], sock: socket.socket, ready_w: int):
        self.index = index
        self.ready = False
        payload = json.dumps({**spec, "index": index, "fd": sock.fileno(), "ready_fd": ready_w})
        # its own process group: Ctrl-C reaches the supervisor only, which stops the workers
        # in order (SIGTERM) instead of racing them; and it dies with the supervisor
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tandem.serving.workers"],
            stdin=subprocess.PIPE,
            pass_fds=(sock.fileno(), ready_w),
            process_group=0,
            preexec_fn=die_with_parent,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(payload.encode())
        self.proc.stdin.close()


def serve_processes(
    refs: Sequence[str],
    options: ServeOptions,
    processes: int,
    *,
    on_ready: Callable[[int, float], None] | None = None,
    start_timeout_s: float = 300.0,
) -> int:
    """Run ``processes`` workers serving ``refs`` on one port until SIGINT/SIGTERM; blocks.

    ``on_ready(port, seconds)`` is called once every worker is ready. Returns the exit status:
    0 after a requested stop (during start-up too); a worker's (128 + N for death by signal
    N) if one failed while loading; 1 when they kept dying or never became ready.
    """
    if not 1 <= processes <= 64:
        raise UsageError(f"--processes must be between 1 and 64; got {processes}")
    if not refs:
        raise UsageError("name at least one model to serve, e.g. tandem serve rain@champion")
    from tandem.registry import Registry

    with Registry() as registry:  # a typo fails here, before anything binds or starts
        for ref in refs:
            registry.get(ref)
    started = time.monotonic()
    sock = _listen(options.host, options.port)
    port = int(sock.getsockname()[1])
    opts = dataclasses.asdict(options)
    spec = {"refs": list(refs), "options": opts, "processes": processes}
    ready_r, ready_w = os.pipe()
    os.set_blocking(ready_r, False)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    workers: list[_Worker] = []
    restarts: deque[float] = deque()
    announced = False
    status = 0
    try:
        workers += [_Worker(i, spec, sock, ready_w) for i in range(processes)]
        while not stopping:
            readable, _, _ = select.select([ready_r], [], [], 0.2)
            if readable:
                for byte in os.read(ready_r, 4096):
                    workers[byte].ready = True
            if not announced and all(w.ready for w in workers):
                announced = True
                if on_ready is not None:
                    on_ready(port, time.monotonic() - started)
            if not announced and time.monotonic() - started > start_timeout_s:
                log.error("the workers did not become ready in %.0f s; stopping", start_timeout_s)
                status = 1
                break
            for i, w in enumerate(workers):
                code = w.proc.poll()
                if code is None or stopping:
                    continue
                how = _how_it_ended(code)
                if not announced:  # failed while loading: its siblings would fail the same way
                    log.error("server process %d (pid %d) %s while loading; stopping",
                              i, w.proc.pid, how)  # fmt: skip
                    status = _exit_status(code)
                    stopping = True
                    break
                now = time.monotonic()
                while restarts and now - restarts[0] > 60:
                    restarts.popleft()
                if len(restarts) >= MAX_RESTARTS:
                    log.error("server processes keep dying (%d in a minute, the last %s); stopping",
                              len(restarts) + 1, how)  # fmt: skip
                    status = 1
                    stopping = True
                    break
                restarts.append(now)
                log.warning("server process %d (pid %d) %s; starting another", i, w.proc.pid, how)
                workers[i] = _Worker(i, spec, sock, ready_w)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop(workers, grace=options.batching.timeout_s + 10)
        sock.close()
        os.close(ready_r)
        os.close(ready_w)
    return status


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _exit_status(code: int) -> int:
    """A child's return code as a shell reports it: 128 + N for death by signal N."""
    return 128 - code if code < 0 else (code or 1)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``),
    so that a server or load generator never outlives a killed supervisor; elsewhere a no-op.
    Meant for ``subprocess.Popen(preexec_fn=...)``."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(workers: list[_Worker], grace: float) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def _worker_main() -> None:
    spec = json.loads(sys.stdin.read())
    sys.stdin.close()
    index = int(spec["index"])
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [process {index}] %(message)s",
    )
    opts = dict(spec["options"])
    opts["batching"] = BatcherConfig(**opts["batching"])
    opts["log"] = LogOptions(**opts["log"])
    options = ServeOptions(**opts)
    sock = socket.socket(fileno=int(spec["fd"]))
    ready_fd = int(spec["ready_fd"])

    def ready(server: Any) -> None:
        os.write(ready_fd, bytes([index]))

    from tandem.serving.server import serve

    settings = {"process": index, "processes": int(spec["processes"])}
    serve(spec["refs"], options, on_ready=ready, sock=sock, settings=settings)


if __name__ == "__main__":
    from tandem.errors import TandemError

    try:
        _worker_main()
    except TandemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(0)
