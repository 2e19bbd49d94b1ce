"""The Open Inference Protocol v2 (KServe / Triton REST): request parsing, responses, metadata.

Inputs come either as one tensor per signature column (shape ``[n]`` or ``[n, 1]``) or as
one matrix of shape ``[n, k]`` whose columns follow the signature (any name). Outputs are
one tensor per output column: ``label`` and ``proba_<class>`` for classifiers, ``prediction``
for regressors, as the Predictor returns them.

Triton's binary tensor extension is supported both ways, because ``tritonclient`` uses it by
default: the JSON header's length is in ``Inference-Header-Content-Length``, each binary input
says its ``binary_data_size``, and outputs asked for with ``binary_data`` (or the request's
``binary_data_output``) come back the same way. BYTES elements are a 4-byte little-endian
length followed by the bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from tandem.data.schema import ColumnSpec
from tandem.errors import UsageError
from tandem.serving import codec
from tandem.serving.http import Response

__all__ = ["InferRequest", "model_metadata", "parse_infer", "render_infer"]

#: OIP datatype -> little-endian numpy dtype (BYTES handled apart)
_DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_KIND_TYPE = {
    "numeric": "FP64",
    "boolean": "BOOL",
    "categorical": "BYTES",
    "text": "BYTES",
    "image": "BYTES",
    "items": "BYTES",
}
#: decoded output columns that are not FP64 (the label's type follows the classes)
_OUTPUT_TYPE = {"cluster": "INT64", "anomaly": "BOOL"}


class ProtocolError(UsageError):
    """A request body that does not follow the protocol (HTTP 400)."""


@dataclass(slots=True)
class InferRequest:
    #: what the Predictor's preprocess step takes: a dict of columns or an (n, k) matrix
    rows: Mapping[str, Any] | np.ndarray
    id: str | None
    #: output names asked for (None: all), and whether each comes back binary (None: as the
    #: request's binary_data_output says)
    outputs: list[tuple[str, bool | None]] | None
    binary_all: bool
    timeout_ms: float | None


def parse_infer(body: bytes, header_length: str | None, names: Sequence[str]) -> InferRequest:
    """Read an infer request for a model whose signature has the columns ``names``; raise
    :class:`ProtocolError` naming what is wrong."""
    blob = b""
    if header_length is not None:
        try:
            cut = int(header_length)
        except ValueError:
            raise ProtocolError(
                f"Inference-Header-Content-Length must be a byte count; got {header_length!r}"
            ) from None
        if not 0 <= cut <= len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length {cut} is outside the {len(body)}-byte body"
            )
        body, blob = body[:cut], body[cut:]
    try:
        obj = codec.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), list) or not obj["inputs"]:
        raise ProtocolError(
            'an infer request is a JSON object with a non-empty "inputs" list, e.g. '
            '{"inputs": [{"name": "age", "shape": [1], "datatype": "FP64", "data": [41]}]}'
        )
    params = _params(obj, "the request") if "parameters" in obj else {}
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(obj["inputs"]):
        name, array, offset = _tensor(spec, i, blob, offset)
        if name in tensors:
            raise ProtocolError(f"input {name!r} is given twice")
        tensors[name] = array
    if offset != len(blob):
        raise ProtocolError(
            f"the binary part has {len(blob) - offset} bytes that no input's binary_data_size claims"
        )
    rows: Mapping[str, Any] | np.ndarray
    matrix = _as_matrix(tensors, names)
    if matrix is not None:
        rows = matrix
    else:
        for name, array in tensors.items():
            if array.ndim == 2 and array.shape[1] == 1:
                tensors[name] = array[:, 0]
            elif array.ndim != 1:
                raise ProtocolError(
                    f"input {name!r} has shape {list(array.shape)}: give one tensor per column "
                    f"with shape [n] or [n, 1], or one matrix of shape [n, {len(names)}] with "
                    f"the columns {list(names)}"
                )
        rows = tensors
    wanted: list[tuple[str, bool | None]] | None = None
    if obj.get("outputs") is not None:
        if not isinstance(obj["outputs"], list):
            raise ProtocolError('"outputs" must be a list of {"name": ...} objects')
        wanted = []
        for out in obj["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise ProtocolError('each of "outputs" must be an object with a "name"')
            binary = _params(out, "an output").get("binary_data") if "parameters" in out else None
            wanted.append((out["name"], None if binary is None else bool(binary)))
    request_id = obj.get("id")
    timeout = params.get("timeout_ms")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise ProtocolError(
            f"parameters.timeout_ms must be a number of milliseconds; got {timeout!r}"
        )
    return InferRequest(
        rows=rows,
        id=None if request_id is None else str(request_id),
        outputs=wanted,
        binary_all=bool(params.get("binary_data_output", False)),
        timeout_ms=None if timeout is None else float(timeout),
    )


def _params(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"the parameters of {what} must be a JSON object")
    return params


def _tensor(spec: Any, i: int, blob: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError(f"input {i} must be an object with a name, shape, datatype and data")
    name = spec["name"]
    shape, datatype = spec.get("shape"), spec.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(
            f"input {name!r}: shape must be a list of non-negative integers; got {shape!r}"
        )
    if datatype != "BYTES" and datatype not in _DTYPES:
        raise ProtocolError(
            f"input {name!r}: datatype {datatype!r} is not one of {['BYTES', *_DTYPES]}"
        )
    count = math.prod(shape)
    size = _params(spec, repr(name)).get("binary_data_size") if "parameters" in spec else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(blob):
            raise ProtocolError(
                f"input {name!r}: binary_data_size {size!r} runs past the {len(blob)}-byte binary part"
            )
        raw = blob[offset : offset + size]
        offset += size
        flat = (
            _bytes_elements(raw, name)
            if datatype == "BYTES"
            else _binary_numbers(raw, datatype, count, name)
        )
    else:
        if "data" not in spec:
            raise ProtocolError(f"input {name!r} has no data (and no binary_data_size)")
        flat = _json_elements(spec["data"], datatype, name)
    if len(flat) != count:
        raise ProtocolError(
            f"input {name!r}: shape {shape} holds {count} elements but {len(flat)} were sent"
        )
    return name, flat.reshape(shape) if shape else flat, offset


def _json_elements(data: Any, datatype: str, name: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    elif data and isinstance(data[0], list):  # the row-major nested form
        data = _flatten(data)
    if datatype == "BYTES":
        return np.array(data, dtype=object)
    try:
        array = np.array(data, dtype=np.float64 if datatype != "BOOL" else bool)
    except (TypeError, ValueError):
        raise ProtocolError(
            f"input {name!r}: datatype {datatype} needs numbers (true/false for BOOL); the data "
            "holds something else: send text columns as BYTES, missing values as NaN or as a BYTES null"
        ) from None
    if array.ndim != 1:
        raise ProtocolError(f"input {name!r}: nested data must be rectangular")
    return array


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def _binary_numbers(raw: bytes, datatype: str, count: int, name: str) -> np.ndarray:
    dtype = _DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"input {name!r}: {len(raw)} binary bytes do not hold {count} {datatype} values"
        )
    return np.frombuffer(raw, dtype=dtype)


def _bytes_elements(raw: bytes, name: str) -> np.ndarray:
    """Text as str; an element that is not UTF-8 (an image file) stays bytes."""
    out: list[str | bytes] = []
    view = memoryview(raw)
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: a BYTES element's 4-byte length is cut off")
        size = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if pos + size > len(raw):
            raise ProtocolError(f"input {name!r}: a BYTES element runs past its binary data")
        element = bytes(view[pos : pos + size])
        try:
            out.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(element)
        pos += size
    return np.array(out, dtype=object)


def _as_matrix(tensors: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray | None:
    """The one-matrix form: a single 2-D input of k columns that is not itself a column."""
    if len(tensors) != 1:
        return None
    ((name, array),) = tensors.items()
    if name in names or array.ndim != 2 or array.shape[1] != len(names):
        return None
    return array


# -- responses -------------------------------------------------------------------------------


def render_infer(
    model: str,
    version: int,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
    declared: Sequence[str],
) -> Response:
    """The infer response; JSON, or JSON + binary blobs when any output was asked binary."""
    if request.outputs is None:
        chosen = [(name, request.binary_all) for name in declared]
    else:
        chosen = [
            (name, request.binary_all if binary is None else binary)
            for name, binary in request.outputs
        ]
    tensors = []
    blobs: list[bytes] = []
    for name, binary in chosen:
        values = outputs[name]
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": _datatype(values),
            "shape": [len(values)],
        }
        if binary:
            blob = _to_binary(values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            numeric = values.dtype.kind in "biuf"
            tensor["data"] = np.ascontiguousarray(values) if numeric else values.tolist()
        tensors.append(tensor)
    head: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request.id is not None:
        head["id"] = request.id
    head["outputs"] = tensors
    body = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    extra = [("x-tandem-model", f"{model}:{version}")]
    if not blobs:
        return Response(200, body, headers=extra)
    extra.append(("inference-header-content-length", str(len(body))))
    return Response(200, body + b"".join(blobs), "application/octet-stream", extra)


def check_outputs(request: InferRequest, declared: Sequence[str]) -> None:
    if request.outputs is None:
        return
    unknown = [name for name, _ in request.outputs if name not in declared]
    if unknown:
        raise ProtocolError(f"unknown output(s) {unknown}: this model gives {list(declared)}")


def _datatype(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"


def _to_binary(values: np.ndarray) -> bytes:
    kind = values.dtype.kind
    if kind == "b":
        return values.astype("?").tobytes()
    if kind in "iu":
        return values.astype("<i8").tobytes()
    if kind == "f":
        return values.astype("<f8").tobytes()
    parts = []
    for v in values.tolist():
        raw = str(v).encode()
        parts.append(len(raw).to_bytes(4, "little") + raw)
    return b"".join(parts)


def model_metadata(
    name: str,
    version: int,
    signature: Sequence[ColumnSpec],
    outputs: Sequence[str],
    classes: Sequence[Any],
) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the Bundle's signature in OIP terms."""
    label_type = _datatype(np.asarray(classes)) if classes else "FP64"
    return {
        "name": name,
        "versions": [str(version)],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": c.name, "datatype": _KIND_TYPE[c.kind], "shape": [-1]} for c in signature
        ],
        "outputs": [
            {
                "name": o,
                "datatype": label_type
                if o == "label"
                else "BYTES"
                if o.startswith("item_")
                else _OUTPUT_TYPE.get(o, "FP64"),
                "shape": [-1],
            }
            for o in outputs
        ],
    }
