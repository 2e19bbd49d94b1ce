"""The serving app as an ASGI application, for users who run their own ASGI server.

``tandem serve`` does not use this: its own HTTP layer is several times faster (see
:mod:`tandem.serving.http`). This adapter lets the same routes run under uvicorn, hypercorn
or granian, or be mounted in a larger ASGI app; the benchmark measures it as an alternative.

    TANDEM_SERVE_MODELS="rain@champion" uvicorn --factory tandem.serving.asgi:create_app
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tandem.errors import UsageError
from tandem.serving.http import Request, Response, json_error
from tandem.serving.server import ServeOptions, Server

__all__ = ["AsgiApp", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AsgiApp:
    """Loads the models on ASGI ``lifespan`` start-up and answers ``http`` requests."""

    def __init__(self, refs: list[str], options: ServeOptions | None = None) -> None:
        self.refs = refs
        self.options = options or ServeOptions()
        self.server: Server | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.server = Server(self.refs, self.options)
                    await self.server.start(bind=False)
                    assert self.server.loading is not None
                    await self.server.loading  # a model that cannot load fails start-up here
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.server is not None:
                    await self.server.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        limit = self.options.max_body
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await _send(
                    send,
                    json_error(
                        413, f"the request body is over this server's limit of {limit} bytes"
                    ),
                )
                return
        if self.server is None:
            await _send(
                send, json_error(503, "not ready: the ASGI server did not run lifespan start-up")
            )
            return
        request = Request(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body,
            time.monotonic(),
        )
        result = self.server.app(request)
        response = result if isinstance(result, Response) else await result
        await _send(send, response)


async def _send(send: Send, response: Response) -> None:
    headers = [(b"content-type", response.content_type.encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def create_app() -> AsgiApp:
    """The factory for ``uvicorn --factory``: models from ``TANDEM_SERVE_MODELS`` (space-separated)."""
    refs = os.environ.get("TANDEM_SERVE_MODELS", "").split()
    if not refs:
        raise UsageError('set TANDEM_SERVE_MODELS to the models to serve, e.g. "rain@champion"')
    return AsgiApp(refs)
