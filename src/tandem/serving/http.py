"""A small HTTP/1.1 server on asyncio: httptools parses, this module answers.

Why our own and not uvicorn or granian: the issue's measurement, repeated here on one pinned
core with wrk (benchmarks/bench_serving.py), put a bare ASGI app on uvicorn at ~10k req/s and
granian at ~4.5k, while an ``asyncio.Protocol`` over the same httptools parser on uvloop did
~44k. The ASGI layer (a dict per event, two awaits per response) is the cost, not the parser.
What we keep from those servers is the parser (httptools, uvicorn's) and the event loop
(uvloop); what we write is the part the measurement blames: turning a parsed request into a
handler call and a response into one ``write``. The same handler also runs under any ASGI
server through :mod:`tandem.serving.asgi`.

Supported: keep-alive, pipelining (responses in request order), chunked request bodies,
``Expect: 100-continue``, a body-size limit (413 before the body is read), a connection limit,
an idle timeout, graceful close. Not supported, on purpose: HTTP/2, upgrades, TLS (put a proxy
in front for those).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

import httptools
import orjson

__all__ = ["HttpServer", "Request", "Response", "json_error"]

log = logging.getLogger("tandem.serving")

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
#: the most bytes a request line plus headers may take (431 above), and how long a client may
#: take to send them: a slow or endless head must not hold a connection slot or grow memory
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    #: header names in lower case; a repeated header keeps its last value
    headers: dict[str, str]
    body: bytes
    #: time.monotonic() when the request was complete
    received: float
    #: False when the client asked to close after this request (or speaks HTTP/1.0)
    keep_alive: bool = True
    #: HEAD: the response keeps its headers (content-length included) and drops its body
    head_only: bool = False


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], "Response | Awaitable[Response]"]


def json_error(status: int, message: str, **headers: str) -> Response:
    """``{"error": message}``: the Open Inference Protocol's error body, used for every route
    that has no error format of its own."""
    return Response(
        status,
        orjson.dumps({"error": message}),
        headers=[(k.replace("_", "-"), v) for k, v in headers.items()],
    )


class _DateHeader:
    """The ``date`` header, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._value


class HttpServer:
    """Serves ``handler`` on one port.

    Args:
        handler: called once per complete request, on the event loop; returns a
            :class:`Response` or an awaitable of one. It must not raise (it is wrapped so that
            an exception becomes a bare 500 without details).
        max_body: bytes; a larger request gets 413 before its body is read.
        max_connections: further connections are closed at once.
        idle_timeout: seconds a keep-alive connection may stay silent.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int = 16 * 2**20,
        max_connections: int = 2048,
        idle_timeout: float = 60.0,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self.date = _DateHeader()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> int:
        """Listen; returns the port (useful with ``port=0``). With ``sock``, accept on that
        listening socket instead (several processes sharing one port)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(
                lambda: _Connection(self), sock=sock, backlog=2048
            )
        else:
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, reuse_address=True, backlog=2048
            )
        self._sweeper = loop.create_task(self._sweep())
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def _sweep(self) -> None:
        # one wake-up every few seconds closes idle keep-alive connections (and slow clients
        # that never finish a request): cheaper than a timer per connection
        period = max(0.5, min(5.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            cutoff = now - self.idle_timeout
            for conn in list(self.connections):
                if conn.busy:
                    continue
                if conn.last_active < cutoff or (
                    conn.head_started is not None and now - conn.head_started > HEAD_TIMEOUT_S
                ):
                    conn.close()

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` seconds), close."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.keep_alive = False
            if not conn.busy:
                conn.close()
        end = time.monotonic() + grace
        while any(c.busy for c in self.connections) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close()


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Request] = deque()
        self.busy = False
        self.keep_alive = True
        self.closing = False  # a request asked to close: what follows it is not served
        self.writable = True
        self.head_started: float | None = None
        self.head_done = True  # between messages: set False when a new one begins
        self.last_active = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.head_size = 0
        self.refused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its methods
        self.transport = transport = cast(asyncio.Transport, transport)
        if len(self.server.connections) >= self.server.max_connections:
            log.warning(
                "connection limit (%d) reached; closing a new connection",
                self.server.max_connections,
            )
            transport.close()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
            if not self.head_done and not self.refused:
                # httptools buffers a header until its line ends: count what it holds here
                self.head_size += len(data)
                if self.head_size > MAX_HEAD_BYTES:
                    self._fail(431, f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades (websocket, h2c) are not served here")
        except httptools.HttpParserError as exc:
            if not self.refused:
                self._fail(400, f"malformed HTTP request: {exc}")
            elif self.transport is not None and not self.busy:
                self.transport.close()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._next()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.head_started = time.monotonic()
        self.head_done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_started = None
        self.head_done = True
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            self._refuse_body(int(length))
            return
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        if self.refused:
            return
        self.body_size += len(chunk)
        if self.body_size > self.server.max_body:
            self._refuse_body(self.body_size)
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.head_size = 0
        if self.refused or self.closing:
            return
        url = httptools.parse_url(self.url)
        request = Request(
            self.parser.get_method().decode("latin-1"),
            url.path.decode("latin-1"),
            (url.query or b"").decode("latin-1"),
            self.headers,
            b"".join(self.body),
            time.monotonic(),
            self.parser.should_keep_alive(),
        )
        request.head_only = request.method == "HEAD"
        self.closing = not request.keep_alive
        self.pending.append(request)
        if len(self.pending) > 16 and self.transport is not None:
            self.transport.pause_reading()  # a client pipelining without reading answers
        self._next()

    # -- answering -----------------------------------------------------------------------------

    def _next(self) -> None:
        while not self.busy and self.writable and self.pending and self.transport is not None:
            request = self.pending.popleft()
            try:
                result = self.server.handler(request)
            except Exception:
                log.exception("unexpected error answering %s %s", request.method, request.path)
                result = json_error(500, "internal server error")
            if isinstance(result, Response):
                self._write(result, request.keep_alive, request.head_only)
                continue
            self.busy = True
            future = asyncio.ensure_future(result)
            future.add_done_callback(functools.partial(self._awaited, request=request))
        if not self.pending and self.transport is not None and not self.transport.is_reading():
            self.transport.resume_reading()

    def _awaited(self, future: asyncio.Future[Response], request: Request) -> None:
        self.busy = False
        try:
            response = future.result()
        except Exception:
            log.exception("unexpected error answering a request")
            response = json_error(500, "internal server error")
        self._write(response, request.keep_alive, request.head_only)
        self._next()

    def _write(self, response: Response, keep_alive: bool = True, head_only: bool = False) -> None:
        transport = self.transport
        if transport is None:
            return
        if not keep_alive:
            self.keep_alive = False
        self.last_active = time.monotonic()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"")),
            self.server.date.get(),
            b"content-length: %d\r\n" % len(response.body),
        ]
        if response.body or response.content_type != "application/json":
            head.append(b"content-type: " + response.content_type.encode() + b"\r\n")
        for name, value in response.headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if not head_only:
            head.append(response.body)
        transport.write(b"".join(head))
        if not self.keep_alive:
            self.pending.clear()
            transport.close()

    def _refuse_body(self, size: int) -> None:
        limit = self.server.max_body
        self._fail(
            413,
            f"the request body ({size} bytes) is over this server's limit of {limit} bytes: "
            "send fewer rows per request",
        )

    def _fail(self, status: int, message: str) -> None:
        """Answer an error the parser found, then close: the stream is out of step."""
        self.refused = True
        self.keep_alive = False
        if self.busy:  # an earlier request is still being answered: drop the connection
            self.close()
            return
        self._write(json_error(status, message))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
