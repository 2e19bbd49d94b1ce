"""The MLflow / SageMaker scoring protocol: ``POST /invocations``, answers ``{"predictions": ...}``.

Accepted bodies, as MLflow's scoring server documents them:

* ``application/json`` with exactly one of
  ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`` (pandas ``orient="split"``),
  ``{"dataframe_records": [{"col": v, ...}, ...]}``,
  ``{"instances": [...]}`` (rows as objects, rows as lists in signature order, or an object of
  columns) and ``{"inputs": ...}`` (the same forms);
* ``text/csv`` with a header row, or without one when the values follow the signature order.

Predictions are one object per row with the Predictor's output columns. Errors use MLflow's
shape, ``{"error_code": "BAD_REQUEST", "message": ...}``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tandem.errors import UsageError
from tandem.serving import codec
from tandem.serving.http import Response

__all__ = ["MLFLOW_FORMATS", "ScoringRequest", "error", "parse_invocation", "render_predictions"]

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class ProtocolError(UsageError):
    """A body that is not one of the accepted forms (HTTP 400)."""


class UnsupportedMediaTypeError(UsageError):
    """A content type other than JSON or CSV (HTTP 415)."""

    status = 415


@dataclass(frozen=True)
class ScoringRequest:
    rows: Any
    timeout_ms: float | None


def parse_invocation(
    body: bytes, content_type: str, names: Sequence[str], text_columns: Sequence[str] = (),
    image_column: str | None = None,
) -> ScoringRequest:  # fmt: skip
    """Read a scoring request; ``text_columns`` (the categorical ones) stay text in CSV. A
    model whose input is an image (``image_column``) also takes one image as the raw body
    (``image/*`` or ``application/octet-stream``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "text/csv":
        return ScoringRequest(_csv(body, names, text_columns), None)
    if media.startswith("image/") or media == "application/octet-stream":
        if image_column is None:
            raise UnsupportedMediaTypeError(
                f"content type {media!r} is an image's, and this model takes no image: send "
                f"application/json with one of {list(MLFLOW_FORMATS)}, or text/csv"
            )
        return ScoringRequest({image_column: [body]}, None)
    if media != "application/json":
        accepted = "application/json with one of " + str(list(MLFLOW_FORMATS)) + ", text/csv"
        if image_column is not None:
            accepted += ", or the image itself as image/png, image/jpeg, ..."
        raise UnsupportedMediaTypeError(
            f"content type {content_type or '(none)'!r} is not accepted: send {accepted}"
        )
    try:
        obj = codec.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"the body must be a JSON object with one of {list(MLFLOW_FORMATS)}")
    given = [k for k in MLFLOW_FORMATS if k in obj]
    if len(given) != 1:
        what = "none" if not given else f"{given}"
        raise ProtocolError(
            f"the body must hold exactly one of {list(MLFLOW_FORMATS)}; it holds {what}"
        )
    key = given[0]
    value = obj[key]
    params = obj.get("params") or {}
    timeout = params.get("timeout_ms") if isinstance(params, dict) else None
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise ProtocolError(f"params.timeout_ms must be a number of milliseconds; got {timeout!r}")
    rows: Any
    if key == "dataframe_split":
        rows = _split(value, names)
    elif key == "dataframe_records":
        if not isinstance(value, list):
            raise ProtocolError('"dataframe_records" must be a list of row objects')
        rows = value
    else:
        rows = _instances(value, names, key)
    return ScoringRequest(rows, None if timeout is None else float(timeout))


def _split(value: Any, names: Sequence[str]) -> dict[str, list[Any]]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise ProtocolError(
            '"dataframe_split" must be an object {"columns": [...], "data": [[row], ...]}'
        )
    columns = value.get("columns", list(names))
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ProtocolError('"dataframe_split.columns" must be a list of column names')
    return _rows_to_columns(value["data"], columns)


def _rows_to_columns(data: list[Any], columns: Sequence[str]) -> dict[str, list[Any]]:
    width = len(columns)
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != width:
            raise ProtocolError(
                f"row {i} has {len(row) if isinstance(row, list) else 'no list of'} values; "
                f"every row needs {width}, one per column {list(columns)}"
            )
    if not data:
        return {c: [] for c in columns}
    return {c: list(v) for c, v in zip(columns, zip(*data, strict=True), strict=True)}


def _instances(value: Any, names: Sequence[str], key: str) -> Any:
    if isinstance(value, dict):
        return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
    if not isinstance(value, list):
        raise ProtocolError(f'"{key}" must be a list of rows or an object of columns')
    if value and isinstance(value[0], list):
        return _rows_to_columns(value, names)
    if value and not isinstance(value[0], dict):
        if len(names) != 1:
            raise ProtocolError(
                f'"{key}" holds plain values, which only a one-column model takes; this model '
                f"needs the columns {list(names)}: send rows as objects or lists"
            )
        return {names[0]: value}
    return value


def _csv(body: bytes, names: Sequence[str], text_columns: Sequence[str]) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    first = body.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
    header = [f.strip().strip('"') for f in first]
    has_header = bool(header) and all(h in names for h in header)
    read = pacsv.ReadOptions(column_names=None if has_header else list(names))
    # categorical columns stay text, so "007" keeps its zeros; the rest are read as numbers
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in text_columns},
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    try:
        return pacsv.read_csv(io.BytesIO(body), read_options=read, convert_options=convert)
    except Exception as exc:  # pyarrow raises ArrowInvalid with the line number
        raise ProtocolError(
            f"the CSV body cannot be read ({str(exc).splitlines()[0]}); send a header row with the "
            f"columns {list(names)}, or rows in that order without one"
        ) from None


def render_predictions(records: list[dict[str, Any]]) -> bytes:
    """``{"predictions": [...]}``, one record per row (the Predictor's post-processing of a
    list of rows)."""
    return orjson.dumps({"predictions": records})


_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error(status: int, message: str, **headers: str) -> Response:
    code = _ERROR_CODES.get(status, "INTERNAL_ERROR")
    return Response(
        status,
        orjson.dumps({"error_code": code, "message": message}),
        headers=[(k.replace("_", "-"), v) for k, v in headers.items()],
    )
