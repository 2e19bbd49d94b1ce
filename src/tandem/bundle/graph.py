"""Assemble one ONNX graph from parts: preprocessing, model, output head.

Training-side code (features, model families) emits nodes through :class:`GraphBuilder`;
the Bundle stores the single graph it builds. Inference never imports this module: ONNX
Runtime reads the serialized bytes itself.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["IR_VERSION", "ML_OPSET", "OPSET", "GraphBuilder"]

#: opsets every Bundle graph uses; ai.onnx.ml 5 has TreeEnsemble with double thresholds
OPSET = 21
ML_OPSET = 5
#: the newest IR version that the supported ONNX Runtime releases all load
IR_VERSION = 10

_TYPES = {
    "double": TensorProto.DOUBLE,
    "float": TensorProto.FLOAT,
    "string": TensorProto.STRING,
    "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8,
}


class GraphBuilder:
    """Collects nodes, constants, inputs and outputs, then builds a checked ModelProto.

    Example:
        >>> g = GraphBuilder("demo")
        >>> x = g.input("x", "double", [None, 2])
        >>> y = g.node("Mul", [x, g.const(np.array([2.0, 3.0]))])
        >>> g.output(y, "y", "double", [None, 2])
        >>> model = g.build()
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._nodes: list[onnx.NodeProto] = []
        self._inits: list[onnx.TensorProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._ids = itertools.count()

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def input(self, name: str, dtype: str, shape: list[int | str | None]) -> str:
        self._inputs.append(helper.make_tensor_value_info(name, _TYPES[dtype], shape))
        return name

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.fresh(hint)
        self._inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(
        self, op: str, inputs: list[str], *, domain: str = "", hint: str | None = None, **attrs: Any
    ) -> str:
        out = self.fresh(hint or op.lower())
        self._nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def output(self, value: str, name: str, dtype: str, shape: list[int | str | None]) -> None:
        self._nodes.append(helper.make_node("Identity", [value], [name], name=f"out_{name}"))
        self._outputs.append(helper.make_tensor_value_info(name, _TYPES[dtype], shape))

    def embed(self, model: onnx.ModelProto, feeds: dict[str, str], hint: str) -> list[str]:
        """Copy another model's graph in, wiring its inputs to ``feeds``; returns its outputs.

        Every name inside the embedded graph gets a unique prefix, so parts never collide.
        """
        if _opset(model) != OPSET:
            model = onnx.version_converter.convert_version(model, OPSET)
        prefix = self.fresh(hint) + "/"
        graph_inputs = {i.name for i in model.graph.input}
        if set(feeds) != graph_inputs:
            raise ValueError(
                f"feeds {sorted(feeds)} do not match graph inputs {sorted(graph_inputs)}"
            )

        def rename(n: str) -> str:
            return feeds.get(n, prefix + n) if n else n

        for init in model.graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = rename(init.name)
            self._inits.append(copy)
        for node in model.graph.node:
            copy_node = onnx.NodeProto()
            copy_node.CopyFrom(node)
            copy_node.name = prefix + node.name
            copy_node.input[:] = [rename(n) for n in node.input]
            copy_node.output[:] = [rename(n) for n in node.output]
            self._nodes.append(copy_node)
        return [rename(o.name) for o in model.graph.output]

    def build(self) -> onnx.ModelProto:
        graph = helper.make_graph(self._nodes, self.name, self._inputs, self._outputs, self._inits)
        model = helper.make_model(
            graph,
            opset_imports=[
                helper.make_opsetid("", OPSET),
                helper.make_opsetid("ai.onnx.ml", ML_OPSET),
            ],
            ir_version=IR_VERSION,
            producer_name="tandem",
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _opset(model: onnx.ModelProto) -> int:
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))
