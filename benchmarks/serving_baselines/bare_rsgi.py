"""The bare app on granian's own interface (RSGI) rather than ASGI: same work per request.

Serve with::

    granian --interface rsgi --workers 1 --runtime-threads 1 serving_baselines.bare_rsgi:app
"""

from __future__ import annotations

from typing import Any

import orjson

from serving_baselines._models import load_models, oip_infer

MODELS = load_models()
PREFIX, SUFFIX = "/v2/models/", "/infer"
JSON_HEADERS = [("content-type", "application/json")]
TEXT_HEADERS = [("content-type", "text/plain")]


async def app(scope: Any, protocol: Any) -> None:
    if scope.proto != "http":
        return
    path, method = scope.path, scope.method
    if method == "POST" and path.startswith(PREFIX) and path.endswith(SUFFIX):
        model = MODELS.get(path[len(PREFIX) : -len(SUFFIX)])
        if model is None:
            protocol.response_bytes(404, TEXT_HEADERS, b"unknown model")
            return
        body = await protocol()
        try:
            protocol.response_bytes(200, JSON_HEADERS, oip_infer(model, body))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            protocol.response_bytes(400, JSON_HEADERS, orjson.dumps({"error": str(exc)}))
    elif method == "GET" and path in ("/v2/health/ready", "/v2/health/live"):
        protocol.response_bytes(200, TEXT_HEADERS, b"")
    else:
        protocol.response_bytes(404, TEXT_HEADERS, b"not found")
