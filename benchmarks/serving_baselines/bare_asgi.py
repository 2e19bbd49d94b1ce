"""The floor: a bare ASGI callable, no framework, no batching.

``POST /v2/models/{name}/infer`` parses the Open Inference Protocol v2 body with orjson, runs
the ONNX Runtime session inline on the event loop, and returns the probabilities as an OIP
response; ``GET /v2/health/ready`` answers 200. Serve with e.g.::

    uvicorn serving_baselines.bare_asgi:app --loop uvloop --http httptools --no-access-log
    granian --interface asgi --workers 1 --runtime-threads 1 serving_baselines.bare_asgi:app
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from serving_baselines._models import load_models, oip_infer

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MODELS = load_models()
PREFIX, SUFFIX = "/v2/models/", "/infer"
JSON_HEADERS = [(b"content-type", b"application/json")]
TEXT_HEADERS = [(b"content-type", b"text/plain")]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "http":
        status, headers, body = await _handle(scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _handle(scope: dict[str, Any], receive: Receive) -> tuple[int, list[Any], bytes]:
    path, method = scope["path"], scope["method"]
    if method == "POST" and path.startswith(PREFIX) and path.endswith(SUFFIX):
        model = MODELS.get(path[len(PREFIX) : -len(SUFFIX)])
        if model is None:
            return 404, TEXT_HEADERS, b"unknown model"
        body = await _read_body(receive)
        try:
            return 200, JSON_HEADERS, oip_infer(model, body)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return 400, JSON_HEADERS, orjson.dumps({"error": str(exc)})
    if method == "GET" and path in ("/v2/health/ready", "/v2/health/live"):
        return 200, TEXT_HEADERS, b""
    return 404, TEXT_HEADERS, b"not found"


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)
