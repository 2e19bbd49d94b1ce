"""The serving application: routes, authentication, the two protocols, metrics.

:class:`App` turns one :class:`~tandem.serving.http.Request` into one
:class:`~tandem.serving.http.Response` (or an awaitable of one, for inference). It knows
nothing of sockets: :mod:`tandem.serving.http` and :mod:`tandem.serving.asgi` feed it.

Status codes: 400 a body the protocol or the signature refuses; 401 a missing or wrong API
key; 404 an unknown route, model or version; 405 a wrong method; 413 too large a body (the
HTTP layer); 415 a content type ``/invocations`` does not read; 429 a request that would miss
its deadline in the queue (with ``Retry-After``); 503 while not ready; 504 a request whose
deadline passed in the queue. Never a stack trace: an unexpected error is logged here and
answered with a bare 500.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import math
import re
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import orjson

from tandem.errors import ConfigError, TandemError, UsageError
from tandem.monitoring.predictions import Layout, PredictionLog
from tandem.serving import mlflow, oip
from tandem.serving.batcher import DeadlineExceededError, Outputs, OverloadedError, TooLargeError
from tandem.serving.http import Request, Response, json_error
from tandem.serving.metrics import ServerMetrics
from tandem.serving.models import Runner, ServedModel
from tandem.serving.openapi import openapi_document

__all__ = ["App"]

log = logging.getLogger("tandem.serving")

#: routes answered without an API key, so that probes need no secret
OPEN_ROUTES = frozenset({"/v2/health/live", "/v2/health/ready", "/ping"})
#: timeout_ms in a query string (timeout_ms=250) or a JSON body ("timeout_ms": 250)
_TIMEOUT_MS = re.compile(rb'timeout_ms"?\s*[:=]\s*([0-9]+(?:\.[0-9]+)?)')
#: the most a request may ask for with timeout_ms
MAX_TIMEOUT_MS = 600_000.0
#: the longest X-Request-Id a client may send
MAX_REQUEST_ID = 128
#: the early refusal assumes a body holds at least this share of the rows its size suggests
#: (body bytes / the model's recent bytes per row): rows vary in length, and an overestimate
#: would refuse a request the full parse would have admitted
ROWS_GUESS_SHARE = 0.75

Result = Response | Awaitable[Response]
ErrorFn = Callable[..., Response]


class App:
    """Routes requests to the served models.

    Args:
        models: the served models by name.
        api_key: when set, every route but the health probes needs it, as
            ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.
        predictions: the prediction log that answered requests go to (None: not logged).

    Every inference answer carries ``X-Request-Id``: the client's own when it sent one, else
    one made here; the prediction log keeps it, and ``tandem feedback`` joins labels by it.
    """

    def __init__(
        self,
        models: Sequence[ServedModel],
        *,
        api_key: str | None = None,
        predictions: PredictionLog | None = None,
    ) -> None:
        from tandem import __version__

        self.models = {m.name: m for m in models}
        self.metrics = ServerMetrics()
        self.ready = False
        self.version = __version__
        self._key = api_key.encode() if api_key else None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        #: (model, protocol) -> bytes per row of the bodies parsed lately (EWMA)
        self._bytes_per_row: dict[tuple[str, str], float] = {}
        self._openapi = orjson.dumps(openapi_document(__version__, list(self.models)))
        self.predictions = predictions
        # request ids: a random prefix per process and a counter, unique without a syscall
        self._id_prefix = f"{uuid.uuid4().hex[:12]}-"
        self._ids = itertools.count(1)
        for m in models:
            m.on_batch = self._batch_hook
            m.on_swap = self._swapped

    # -- metrics hooks ---------------------------------------------------------------------------

    def _batch_hook(self, name: str) -> Callable[[int, float], None]:
        rows = self.metrics.batch_rows.labels(name)
        seconds = self.metrics.batch_seconds.labels(name)

        def observe(n: int, s: float) -> None:
            rows.observe(n)
            seconds.observe(s)

        return observe

    def _swapped(self, runner: Runner) -> None:
        if self.predictions is not None:
            manifest = runner.predictor.manifest
            try:
                runner.log_layout = Layout.of(
                    runner.name, runner.version, manifest.inputs, runner.output_columns,
                    runner.predictor,
                )  # fmt: skip
            except ConfigError as exc:
                log.warning("%s: not logging its predictions: %s", runner.ref, exc)
            else:
                # the log keeps each batch's arrays, told once the batch is answered
                runner.batcher.on_answered = partial(self.predictions.add_batch, runner.log_layout)
        self.metrics.version.labels(runner.name).set(runner.version)
        if self.ready:
            self.metrics.swaps.labels(runner.name).inc()

    def _count(self, model: str, protocol: str, code: int, received: float) -> None:
        self._child(self.metrics.requests, model, protocol, str(code)).inc()
        if code == 200:
            self._child(self.metrics.latency, model).observe(time.monotonic() - received)

    def _child(self, metric: Any, *labels: str) -> Any:
        # prometheus_client's labels() costs a few µs; each child is looked up once
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- routing ---------------------------------------------------------------------------------

    def __call__(self, request: Request) -> Result:
        try:
            return self._route(request)
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return json_error(500, "internal server error")

    def _route(self, request: Request) -> Result:
        path = request.path
        if self._key is not None and path not in OPEN_ROUTES and not self._authorized(request):
            return json_error(
                401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                www_authenticate='Bearer realm="tandem"',
            )  # fmt: skip
        method = request.method
        if path.startswith("/v2"):
            return self._v2(request, method, path)
        if path == "/invocations":
            return self._need(method, "POST") or self._invocations(request)
        if path == "/ping":
            if (wrong := self._need(method, "GET", "HEAD")) is not None:
                return wrong
            return Response(200, b"{}") if self.ready else self._not_ready(mlflow.error)
        if path == "/metrics":
            if (wrong := self._need(method, "GET")) is not None:
                return wrong
            self._refresh_gauges()
            return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        if path in ("/openapi.json", "/v2/openapi.json"):
            return self._need(method, "GET") or Response(200, self._openapi)
        return json_error(404, f"no route {path}: see /openapi.json for the routes served here")

    def _authorized(self, request: Request) -> bool:
        assert self._key is not None
        given = request.headers.get("x-api-key")
        if given is None:
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer":
                return False
            given = token.strip()
        return hmac.compare_digest(given.encode("latin-1", "replace"), self._key)

    @staticmethod
    def _need(method: str, *allowed: str) -> Response | None:
        if method in allowed:
            return None
        return json_error(
            405,
            f"method {method} is not allowed here; use {' or '.join(allowed)}",
            allow=", ".join(allowed),
        )

    def _not_ready(self, error: ErrorFn, name: str | None = None) -> Response:
        loading = [m.name for m in self.models.values() if m.runner is None]
        what = f"model {name} is" if name else f"model(s) {loading} are"
        return error(
            503, f"not ready: {what} still loading and warming up; retry shortly", retry_after="1"
        )

    # -- Open Inference Protocol v2 --------------------------------------------------------------

    def _v2(self, request: Request, method: str, path: str) -> Result:
        parts = path.rstrip("/").split("/")[2:]  # after "", "v2"
        if not parts:
            return self._need(method, "GET") or _json(
                {"name": "tandem", "version": self.version, "extensions": ["binary_tensor_data"]}
            )
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            if (wrong := self._need(method, "GET", "HEAD")) is not None:
                return wrong
            if parts[1] == "live":
                return _json({"live": True})
            return _json({"ready": True}) if self.ready else self._not_ready(json_error)
        if parts[0] != "models" or len(parts) < 2:
            return json_error(404, f"no route {path}: see /openapi.json for the routes served here")
        name, rest = parts[1], parts[2:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        served = self.models.get(name)
        if served is None:
            return json_error(
                404, f"no model named {name!r} is served here; served: {sorted(self.models)}"
            )
        runner = served.runner
        if runner is None:
            return self._not_ready(json_error, name)
        if version is not None and version != str(runner.version):
            return json_error(
                404,
                f"model {name} serves version {runner.version}; version {version} is not loaded",
            )
        action = rest[0] if rest else ""
        if len(rest) > 1 or action not in ("", "ready", "infer"):
            return json_error(404, f"no route {path}: see /openapi.json for the routes served here")
        if action == "":
            return self._need(method, "GET") or _json(runner.metadata)
        if action == "ready":
            return self._need(method, "GET", "HEAD") or _json({"name": name, "ready": True})
        return self._need(method, "POST") or self._oip_infer(request, runner)

    def _oip_infer(self, request: Request, runner: Runner) -> Result:
        def parse(body: bytes) -> tuple[Any, float | None, Callable[[Outputs], Response]]:
            parsed = oip.parse_infer(
                body, request.headers.get("inference-header-content-length"), runner.input_names
            )
            oip.check_outputs(parsed, runner.output_columns)
            if parsed.id is not None:  # the protocol's own request id, unless a header gave one
                request.headers.setdefault("x-request-id", parsed.id[:MAX_REQUEST_ID])
            return (
                parsed.rows,
                parsed.timeout_ms,
                lambda outputs: oip.render_infer(
                    runner.name, runner.version, parsed, outputs, runner.output_columns
                ),
            )

        return self._predict(request, runner, "v2", json_error, parse)

    # -- MLflow / SageMaker ----------------------------------------------------------------------

    def _invocations(self, request: Request) -> Result:
        served = self._pick_model(request)
        if isinstance(served, Response):
            return served
        runner = served.runner
        if runner is None:
            return self._answer(
                served.name, "mlflow", self._not_ready(mlflow.error, served.name), request
            )

        def parse(body: bytes) -> tuple[Any, float | None, Callable[[Outputs], Response]]:
            parsed = mlflow.parse_invocation(
                body,
                request.headers.get("content-type", ""),
                runner.input_names,
                runner.text_columns,
                runner.image_column,
            )
            return (
                parsed.rows,
                parsed.timeout_ms,
                lambda outputs: Response(
                    200,
                    mlflow.render_predictions(runner.predictor.postprocess(outputs, [])),
                    headers=[("x-tandem-model", runner.ref)],
                ),
            )

        return self._predict(request, runner, "mlflow", mlflow.error, parse)

    def _pick_model(self, request: Request) -> ServedModel | Response:
        wanted = request.headers.get("x-tandem-model")
        if wanted is None and request.query:
            wanted = next(iter(urllib.parse.parse_qs(request.query).get("model", [])), None)
        if wanted is None:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            return mlflow.error(
                400,
                f"this server serves several models {sorted(self.models)}: name one with "
                "'?model=NAME' or the header 'X-Tandem-Model: NAME'",
            )
        served = self.models.get(wanted)
        if served is None:
            return mlflow.error(
                404, f"no model named {wanted!r} is served here; served: {sorted(self.models)}"
            )
        return served

    # -- shared by both protocols ----------------------------------------------------------------

    def _deadline(self, request: Request, timeout_ms: float | None, runner: Runner) -> float:
        """When this request must be answered: from its arrival, not from when it was parsed."""
        if timeout_ms is None and "timeout_ms" in request.query:
            raw = (urllib.parse.parse_qs(request.query).get("timeout_ms") or [""])[0]
            try:
                timeout_ms = float(raw)
            except ValueError:
                raise UsageError(
                    f"timeout_ms must be a number of milliseconds; got {raw!r}"
                ) from None
        if timeout_ms is None:
            return request.received + runner.batcher.config.timeout_s
        if not 0 < timeout_ms <= MAX_TIMEOUT_MS or math.isnan(timeout_ms):
            raise UsageError(
                f"timeout_ms must be between 0 and {MAX_TIMEOUT_MS:.0f}; got {timeout_ms}"
            )
        return request.received + timeout_ms / 1e3

    def _early_refusal(
        self, runner: Runner, request: Request, body: bytes, protocol: str, error: ErrorFn
    ) -> Response | None:
        """429 before parsing, when the request would miss its deadline: under 2× overload
        half the requests are refused, and parsing their bodies first would spend the model's
        core on answers that say no. The rows are guessed from the body's size and the bytes
        per row of this model's recent requests of the same protocol (at least one row); the
        deadline is the server's default, or a ``timeout_ms`` read from the query or found in
        the body by a byte scan. The full parse decides everything else.

        Measured: with one row assumed, a third of the refusals under 2× overload (200-row
        requests to a model at its admission limit) passed this check and were refused only
        after parsing."""
        batcher = runner.batcher
        if not batcher.queued_rows:
            return None
        per_row = self._bytes_per_row.get((runner.name, protocol))
        rows = max(1, int(len(body) / per_row * ROWS_GUESS_SHARE)) if per_row else 1
        timeout_s = batcher.config.timeout_s
        if "timeout_ms" in request.query or b"timeout_ms" in body:
            found = _TIMEOUT_MS.search(request.query.encode("latin-1")) or _TIMEOUT_MS.search(body)
            if found is None:
                return None  # written some other way: let the parser read it
            timeout_s = float(found.group(1)) / 1e3
        try:
            batcher.admit(rows, request.received + timeout_s)
        except TooLargeError:
            return None  # the parsed request gets the precise answer
        except OverloadedError as exc:
            return _overloaded(exc, error)
        return None

    def _predict(
        self,
        request: Request,
        runner: Runner,
        protocol: str,
        error: ErrorFn,
        parse: Callable[[bytes], tuple[Any, float | None, Callable[[Outputs], Response]]],
    ) -> Result:
        """The path both protocols share: inflate, refuse early, parse, encode, batch, render.

        ``parse`` reads the protocol's body into (rows for the Predictor, the request's own
        timeout_ms or None, how to render outputs); errors map to their status (400 unless the
        error says otherwise: 413, 415) in the protocol's error shape.
        """
        name = runner.name
        predictor = runner.predictor
        batcher = runner.batcher
        given = request.headers.get("x-request-id")
        rid = given or f"{self._id_prefix}{next(self._ids)}"
        try:
            if len(rid) > MAX_REQUEST_ID:
                raise UsageError(
                    f"X-Request-Id is {len(rid)} characters long; send at most {MAX_REQUEST_ID}"
                )
            body = _decoded(request)
            if (early := self._early_refusal(runner, request, body, protocol, error)) is not None:
                return self._answer(name, protocol, early, request, rid)
            rows, timeout_ms, render = parse(body)
            if given is None:
                rid = request.headers.get("x-request-id", rid)
            deadline = self._deadline(request, timeout_ms, runner)
            try:
                feed = predictor.encode(predictor.preprocess(rows))
            except (ValueError, TypeError) as exc:  # numpy's own refusals of odd values
                raise UsageError(f"the rows cannot be read as the model's columns: {exc}") from None
            n = _rows_in(feed)
            if n:
                key = (name, protocol)
                seen = len(body) / n
                last = self._bytes_per_row.get(key, seen)
                self._bytes_per_row[key] = last + 0.1 * (seen - last)
            if n == 0:  # nothing to compute: the output columns, empty
                empty = predictor.decode(np.empty((0, len(runner.output_columns) - 1 or 1)))
                return self._answer(name, protocol, render(empty), request, rid)
            plog = self.predictions
            logged = plog is not None and runner.log_layout is not None and plog.sampled()
            tag = rid if logged else None
            now = batcher.run_now(feed, n, deadline=deadline, tag=tag)
            if now is not None:
                self._child(self.metrics.rows, name).inc(n)
                return self._answer(name, protocol, render(now), request, rid)
            future = batcher.submit(feed, n, deadline=deadline, tag=tag)
        except OverloadedError as exc:
            return self._answer(name, protocol, _overloaded(exc, error), request, rid)
        except UsageError as exc:
            return self._answer(name, protocol, error(_status(exc), str(exc)), request, rid)
        self._child(self.metrics.rows, name).inc(n)

        def finish(f: asyncio.Future[Outputs]) -> Response:
            try:
                outputs = f.result()
                response = render(outputs)
            except DeadlineExceededError as exc:
                response = error(504, str(exc))
            except UsageError as exc:
                response = error(_status(exc), str(exc))
            except TandemError as exc:
                log.error("model %s failed: %s", runner.ref, exc)
                response = error(500, f"model {runner.ref} failed; see the server log")
            except Exception:
                log.exception("unexpected error in model %s", runner.ref)
                response = error(500, "internal server error")
            response.headers.append(("x-request-id", rid))
            self._count(name, protocol, response.status, request.received)
            return response

        if future.done():  # an idle model ran it inline, during submit: answer at once
            return finish(future)
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: answer.set_result(finish(f)))
        return answer

    def _answer(
        self, model: str, protocol: str, response: Response, request: Request, rid: str = ""
    ) -> Response:
        if rid:
            response.headers.append(("x-request-id", rid))
        self._count(model, protocol, response.status, request.received)
        return response

    def _refresh_gauges(self) -> None:
        m = self.metrics
        m.ready.set(1 if self.ready else 0)
        for name, served in self.models.items():
            runner = served.runner
            if runner is None:
                continue
            b = runner.batcher
            m.queue_rows.labels(name).set(b.queued_rows)
            m.max_batch.labels(name).set(b.max_batch)
            m.cost_per_row.labels(name).set(b.cost.per_row)
            m.cost_fixed.labels(name).set(b.cost.fixed)
            m.compute_per_row.labels(name).set(b.compute_cost.per_row)
            m.compute_fixed.labels(name).set(b.compute_cost.fixed)


def _json(obj: Any) -> Response:
    return Response(200, orjson.dumps(obj))


def _rows_in(feed: dict[str, Any]) -> int:
    for array in feed.values():
        return int(array.shape[-1])
    return 0


def _overloaded(exc: OverloadedError, error: ErrorFn) -> Response:
    return error(429, str(exc), retry_after=str(max(1, math.ceil(exc.retry_after_s))))


def _status(exc: UsageError) -> int:
    """The HTTP status of a refused request: 400 unless the error carries its own."""
    status: int = getattr(exc, "status", 400)
    return status


class _EncodingError(UsageError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _decoded(request: Request) -> bytes:
    """The body, inflated when the client compressed it (tritonclient can)."""
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("identity", ""):
        return request.body
    if encoding not in ("gzip", "deflate"):
        raise _EncodingError(
            f"content encoding {encoding!r} is not accepted: use gzip, deflate or none", 415
        )
    import zlib

    limit = 64 * 2**20
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(request.body, limit)
    except zlib.error as exc:
        raise _EncodingError(f"the {encoding} body cannot be inflated: {exc}", 400) from None
    if inflater.unconsumed_tail:
        raise _EncodingError(
            f"the inflated body is over {limit} bytes: send fewer rows per request", 413
        )
    return out
