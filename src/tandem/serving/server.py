"""``tandem serve``: the process around the app: bind, load and warm, follow aliases, stop.

Order of start-up: every reference is resolved in the registry first (a typo fails at once,
before anything binds); then the port is bound, so probes get answers (live 200, ready 503)
while the models load and warm up; then readiness turns true. (With ``--processes N`` a worker
accepts only once ready, so until the first one is, connections wait in the backlog.) A model that fails to load at
start stops the server with the error; one that fails on a later alias move is logged and the
loaded version keeps serving.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tandem.errors import ConfigError, UsageError
from tandem.ledger.meter import process_started
from tandem.monitoring.predictions import LogOptions, PredictionLog
from tandem.registry import ModelVersion, Registry
from tandem.registry.refs import parse_ref
from tandem.serving.app import App
from tandem.serving.batcher import BatcherConfig
from tandem.serving.http import HttpServer
from tandem.serving.models import ServedModel
from tandem.serving.usage import UsageReading, UsageRecorder

__all__ = ["ServeOptions", "Server", "serve"]

log = logging.getLogger("tandem.serving")


@dataclass(frozen=True)
class ServeOptions:
    """How to serve; the defaults suit most uses.

    Attributes:
        host: the address to bind; 127.0.0.1 keeps the server private to this machine.
        port: 0 picks a free port (see :attr:`Server.port`).
        api_key: when set, required on every route but the health probes.
        batching: deadlines and batch limits (see :class:`BatcherConfig`).
        threads: ONNX Runtime intra-op threads per model.
        poll_s: how often followed references (``@alias``, bare names) are re-read; 0: never.
        max_body: request body limit in bytes (413 above it).
        ledger_interval_s: how often what the server did is recorded in the registry for the
            cost ledger (one record per model per interval); 0: not recorded.
        log: the prediction log (:mod:`tandem.monitoring.predictions`): what share of
            requests is kept for ``tandem monitor``; ``LogOptions(sample=0)`` turns it off.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    batching: BatcherConfig = field(default_factory=BatcherConfig)
    threads: int | None = 1
    poll_s: float = 1.0
    max_body: int = 16 * 2**20
    ledger_interval_s: float = 60.0
    log: LogOptions = field(default_factory=LogOptions)

    def __post_init__(self) -> None:
        if self.ledger_interval_s < 0:
            raise ConfigError(
                f"the ledger interval must be >= 0 seconds (0: off); got {self.ledger_interval_s}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535; got {self.port}")
        if self.poll_s < 0:
            raise ConfigError(f"the poll interval must be >= 0 seconds; got {self.poll_s}")
        if self.max_body < 1:
            raise ConfigError(f"the body limit must be at least 1 byte; got {self.max_body}")


class Server:
    """A running server inside an event loop (the CLI's ``serve`` wraps it).

    Unless ``options.ledger_interval_s`` is 0, what it does is recorded in ``registry`` for the
    cost ledger (:mod:`tandem.serving.usage`); ``whole_process`` says the process exists to
    serve, so that its start-up record counts from the process's start.

    Example:
        >>> async def main() -> None:  # doctest: +SKIP
        ...     server = Server(["rain@champion"], ServeOptions(port=0))
        ...     await server.start()
        ...     await server.ready.wait()
        ...     ...
        ...     await server.stop()
    """

    def __init__(
        self,
        refs: Sequence[str],
        options: ServeOptions | None = None,
        *,
        registry: Registry | None = None,
        whole_process: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> None:
        if not refs:
            raise UsageError("name at least one model to serve, e.g. tandem serve rain@champion")
        names = [parse_ref(r).name for r in refs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UsageError(f"model(s) {twice} named more than once: serve each model once")
        self.options = options = options or ServeOptions()
        self._own_registry = registry is None
        self.registry = registry if registry is not None else Registry()
        self.models = [
            ServedModel(ref, self.registry, options.batching, threads=options.threads)
            for ref in refs
        ]
        self.predictions = (
            PredictionLog("serve", options.log, settings=self.registry.settings)
            if options.log.sample > 0
            else None
        )
        self.app = App(self.models, api_key=options.api_key, predictions=self.predictions)
        self.http = HttpServer(self.app, max_body=options.max_body)
        self.ready = asyncio.Event()
        self.port = 0
        self.started = process_started() or time.monotonic()
        self.ready_after_s: float | None = None
        self.loading: asyncio.Task[None] | None = None
        self.usage: UsageRecorder | None = None
        self._whole_process = whole_process
        self._settings = settings or {}
        self._sock: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *, bind: bool = True, sock: socket.socket | None = None) -> None:
        """Resolve the references, bind (unless another server feeds :attr:`app`), and start
        loading (see :attr:`ready`). ``sock``: a listening socket to accept on instead of
        binding, from the moment the models are ready (one of several processes sharing a
        port, see :mod:`tandem.serving.workers`): a sibling that is ready takes the connections
        meanwhile, where a bound-but-loading server would answer them 503."""
        loop = asyncio.get_running_loop()
        versions = [await loop.run_in_executor(None, m.resolve) for m in self.models]
        if self.options.ledger_interval_s > 0:
            self.usage = UsageRecorder(
                self.models, self.app.metrics, self.registry,
                interval_s=self.options.ledger_interval_s,
                settings={"threads": self.options.threads, "port": self.options.port,
                          "max_batch": self.options.batching.max_batch, **self._settings},
                whole_process=self._whole_process,
            )  # fmt: skip
            usage = self.usage

            async def close_interval(old: Any) -> None:
                # what the old version served so far is its own, not the next one's
                await usage.flush_soon("swap")

            for m in self.models:
                m.before_swap = close_interval
        if sock is not None:  # siblings share the socket: accept only once ready (in _load)
            self._sock = sock
        elif bind:
            try:
                self.port = await self.http.start(self.options.host, self.options.port)
            except OSError as exc:
                raise cannot_listen(self.options.host, self.options.port, exc) from None
        self.loading = loop.create_task(self._load(versions))

    async def _load(self, versions: list[ModelVersion]) -> None:
        await asyncio.gather(*(m.load(v) for m, v in zip(self.models, versions, strict=True)))
        if self.predictions is not None:  # its writer imports pandas as it starts: freeze that too
            await asyncio.to_thread(self.predictions.started.wait, 30.0)
        # what start-up allocated lives as long as the process: keep it out of the cyclic
        # collector's full passes, which otherwise walk it all and show up as p99 spikes
        # (measured: pandas' 23,000 objects, left out, cost the log's server 12 ms a full pass)
        gc.collect()
        gc.freeze()
        if self._sock is not None:
            self.port = await self.http.start(self.options.host, 0, sock=self._sock)
        # start-up's record ends here: a request answered before its write is not start-up's
        startup = self.usage.read() if self.usage is not None else None
        self.app.ready = True
        self.ready_after_s = time.monotonic() - self.started
        self.ready.set()
        if self.usage is not None:
            record = self._record(self.usage, startup)
            self._tasks.append(asyncio.get_running_loop().create_task(record))
        if self.options.poll_s > 0 and any(m.follows for m in self.models):
            self._tasks.append(asyncio.get_running_loop().create_task(self._follow()))

    @staticmethod
    async def _record(usage: UsageRecorder, startup: UsageReading | None) -> None:
        await usage.flush_soon("startup", startup)  # loading and warming, before any request
        await usage.run()

    async def _follow(self) -> None:
        # a query costs ~1 ms of Python in a thread, which contends for the GIL with the
        # event loop (measured as p99 spikes once a second); SQLite tells for free whether
        # anything changed, so the query runs only then, or when the last turn did not settle
        token = None  # the first turn always reads: a move during start-up must not be missed
        while True:
            await asyncio.sleep(self.options.poll_s)
            try:
                now = self.registry.change_token()
                if now is not None and now == token:
                    continue
                settled = True
                for m in self.models:
                    settled = await m.refresh() and settled
                if settled:  # remember the state only once every model has caught up with it
                    token = now
            except Exception:  # a broken registry must not end following for good
                log.exception(
                    "following the registry failed; trying again in %.1f s", self.options.poll_s
                )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, answer what is in flight, release everything."""
        for task in self._tasks:
            task.cancel()
        await self.http.close(grace)
        if self.usage is not None and self.app.ready:
            await self.usage.flush_soon()  # the last, partial interval
        for m in self.models:
            if m.runner is not None:
                m.runner.batcher.close()
        if self.predictions is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.predictions.close)
        if self._own_registry:
            self.registry.close()


def cannot_listen(host: str, port: int, exc: OSError) -> ConfigError:
    """The error for a port that cannot be bound (in use, not allowed), with the way out."""
    return ConfigError(
        f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port or stop what "
        "holds it"
    )


def serve(
    refs: Sequence[str],
    options: ServeOptions | None = None,
    *,
    on_ready: Callable[[Server], None] | None = None,
    sock: socket.socket | None = None,
    settings: dict[str, Any] | None = None,
) -> None:
    """Serve ``refs`` until SIGINT or SIGTERM; blocks. Uses uvloop when it is installed.

    ``sock``: accept on this listening socket rather than bind one; ``settings``: more of the
    set-up to note in the usage records (e.g. which of several processes this is)."""
    try:
        import uvloop

        runner: Callable[..., None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        runner = asyncio.run
    runner(_main(refs, options, on_ready, sock, settings or {}))


async def _main(
    refs: Sequence[str],
    options: ServeOptions | None,
    on_ready: Callable[[Server], None] | None,
    sock: socket.socket | None,
    settings: dict[str, Any],
) -> None:
    server = Server(refs, options, whole_process=True, settings=settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start(sock=sock)
        stopping = loop.create_task(stop.wait())
        assert server.loading is not None
        await asyncio.wait({server.loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if server.loading.done():
            server.loading.result()  # a model that would not load: raise its error
            if on_ready is not None:
                on_ready(server)
            await stopping
    finally:
        await server.stop()
