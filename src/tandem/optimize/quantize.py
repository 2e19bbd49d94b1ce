"""int8 quantization of a Bundle's graph with ONNX Runtime.

**Dynamic** (``int8-dynamic``, for MLPs and transformers): weights are stored as int8, and each
call quantizes its activations with a scale computed from that call's values. Nothing to
calibrate, but a row's result depends a little on the rows it is batched with (the scale is
the batch's): the gate counts the rows whose class changes between batch 1 and batch 256.

**Static** (``int8-static``, for CNNs): QuantizeLinear / DequantizeLinear pairs (QDQ) with
activation scales fixed from calibration rows (min-max), so a row's result does not depend
on its batch. Calibration rows come from ``--calibration FILE``, else from the reference
sample kept in the Bundle (training rows, never the holdout the gate measures on).

Only the model's matrix products are quantized (MatMul, Gemm, Conv), with one weight scale per
output channel in deep networks (per tensor in shallow ones), plus (dynamic) float tables read
by row such as token embeddings; the preprocessing, in double, stays as it is. ONNX Runtime's dynamic quantizer does not take ``Gemm``, which is
what torch exports for ``nn.Linear``, so Gemm nodes are first rewritten as MatMul + Add
(the same function).

On x86 CPUs without VNNI, ONNX Runtime multiplies u8 activations by s8 weights with an
instruction (``vpmaddubsw``) whose 16-bit intermediate sums can saturate; its documentation
recommends quantizing weights to 7 bits there (``reduce_range``), which is done when
:func:`cpu_features` finds no VNNI.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from tandem.errors import UsageError

__all__ = ["QUANTIZABLE", "cpu_features", "gemm_to_matmul", "has_vnni", "quantize"]

#: the operators quantization rewrites
QUANTIZABLE = ("MatMul", "Gemm", "Conv")


def cpu_features() -> dict[str, bool]:
    """The x86 features that decide what int8 and bf16 can gain here (Linux; else empty)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return {f: f in flags for f in wanted}


def has_vnni(features: dict[str, bool]) -> bool:
    """Whether :func:`cpu_features` found an int8 dot-product instruction (VNNI or AMX)."""
    return any(features.get(f) for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every ``Gemm`` with a constant weight, alpha = beta = 1 and no transposed
    A is a ``MatMul`` (weight transposed in place if ``transB``) followed by an ``Add``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {t.name: t for t in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if (
            node.op_type != "Gemm"
            or not simple
            or attrs.get("transA", 0)
            or node.input[1] not in weights
        ):
            nodes.append(node)
            continue
        w = weights[node.input[1]]
        if attrs.get("transB", 0):
            array = numpy_helper.to_array(w).T.copy()
            w.CopyFrom(numpy_helper.from_array(array, w.name))
        product = f"{node.output[0]}__matmul"
        has_bias = len(node.input) > 2 and node.input[2]
        nodes.append(helper.make_node("MatMul", [node.input[0], w.name],
                                      [product if has_bias else node.output[0]],
                                      name=f"{node.name or 'gemm'}__matmul"))  # fmt: skip
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=f"{node.name or 'gemm'}__bias"))  # fmt: skip
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


#: matrix products from which a network counts as deep enough for per-channel weight scales
DEEP = 8


def _per_channel(model: onnx.ModelProto, asked: bool | None) -> bool:
    """Per-channel scales, unless told: for deep networks only. Per-tensor error compounds
    layer after layer: MiniLM's text model (48 products) lost 1.5 points of accuracy on BBC
    News with one scale per tensor and none per channel, at the same speed; a 3-layer MLP
    loses nothing per tensor, and per channel its extra scaling made W1's int8 graph slower
    than fp32 at batch 1 (x1.14) and cut its batch-256 gain from x1.28 to x1.20."""
    if asked is not None:
        return asked
    return sum(n.op_type in QUANTIZABLE for n in model.graph.node) > DEEP


class _Rows(CalibrationDataReader):  # type: ignore[misc]
    """ONNX Runtime's calibration reader over graph feeds."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@contextlib.contextmanager
def _no_preprocess_hint() -> Iterator[None]:
    """Drop ONNX Runtime's hint to run its pre-processing first, logged on the root logger:
    on the W1 graph its optimizations made the quantized graph slower (batch 256: 547 µs
    against 416 without), so tandem skips it on purpose."""

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in str(record.msg)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize(
    graph: bytes,
    method: str,
    *,
    calibration: Iterable[dict[str, np.ndarray]] | None = None,
    features: dict[str, bool] | None = None,
    per_channel: bool | None = None,
) -> bytes:
    """The int8 version of ``graph``.

    Args:
        graph: a Bundle's serialized ONNX graph.
        method: ``int8-dynamic`` or ``int8-static``.
        calibration: graph feeds (``int8-static``): a few dozen batches of real rows.
        features: the CPU's (default: :func:`cpu_features`), for ``reduce_range``.
        per_channel: one weight scale per output channel rather than per tensor (default:
            for networks deeper than :data:`DEEP` products, see :func:`_per_channel`).

    Raises:
        UsageError: an unknown method, or a graph with nothing to quantize.
    """
    if method not in ("int8-dynamic", "int8-static"):
        raise UsageError(f"unknown quantization '{method}': choose int8-dynamic or int8-static")
    model = onnx.load_from_string(graph)
    if not any(n.op_type in QUANTIZABLE for n in model.graph.node):
        raise UsageError(
            "the graph has no matrix product to quantize (MatMul, Gemm, Conv): quantization "
            "speeds up neural networks, not tree ensembles or linear models' few products"
        )
    reduce_range = not has_vnni(features if features is not None else cpu_features())
    source = gemm_to_matmul(model)
    with tempfile.TemporaryDirectory(prefix="tandem-quantize-") as folder, _no_preprocess_hint():
        target = Path(folder) / "quantized.onnx"
        options: dict[str, Any] = {"op_types_to_quantize": ["MatMul", "Conv"],
                                   "reduce_range": reduce_range,
                                   "per_channel": _per_channel(model, per_channel)}  # fmt: skip
        if method == "int8-dynamic":
            # + Gather: a float table read by row (a text encoder's token embeddings, most of
            # its size) is kept as int8; graphs' other Gathers read inputs and are left alone
            options["op_types_to_quantize"] = ["MatMul", "Conv", "Gather"]
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, **options)
        else:
            if calibration is None:
                raise UsageError("int8-static needs calibration rows")
            quantize_static(
                source, target, _Rows(calibration), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True}, **options,
            )  # fmt: skip
        return target.read_bytes()
