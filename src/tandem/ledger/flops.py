"""The work of a Bundle graph, counted per input row from its ONNX form: FLOPs by op type,
bytes in, out and through, weights, and kernel launches (what :mod:`tandem.ledger.devices`
turns into estimates for hardware that is not here).

:func:`graph_cost` counts per input row: MatMul/Gemm 2·K·N (+N for a Gemm bias), elementwise
ops 1 per output element, reductions 1 per input element, tree ensembles one comparison per
split on a root-to-leaf path (the mean leaf depth of each tree, unweighted by how many rows
reach a leaf, summed over trees), LinearClassifier/Regressor 2 per coefficient, other
ai.onnx.ml ops 1 per element; data movement (Transpose, Gather, Concat...) 0. Any other op is
listed in ``uncounted``, never silently 0. Shapes come from ONNX shape inference run at batch
1 and 2: the difference is what one more row adds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tandem.errors import BundleError

if TYPE_CHECKING:  # onnx is a training-side library: imported only when a graph is counted
    import onnx

__all__ = ["GraphCost", "graph_cost"]

#: bytes counted per string element (ONNX Runtime holds a std::string, 32 bytes, but category
#: names are short and only their characters move)
_STRING_BYTES = 16


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


_MATMUL = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"})
_INT8 = frozenset({"MatMulInteger", "QLinearMatMul"})
_ELEMENTWISE = _ops(
    "Abs Add And Cast Ceil Clip DequantizeLinear Div DynamicQuantizeLinear Elu Equal Erf Exp "
    "Floor Gelu Greater GreaterOrEqual HardSigmoid IsInf IsNaN LeakyRelu Less LessOrEqual Log "
    "LogSoftmax Max Mean Min Mod Mul Neg Not Or Pow QuantizeLinear Reciprocal Relu Round Selu "
    "Sigmoid Sign Softmax Softplus Sqrt Sub Sum Tanh Where Xor"
)
_REDUCE = _ops(
    "ArgMax ArgMin ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceSum TopK"
)
_MOVE = _ops(
    "Concat Constant Expand Flatten Gather Identity Reshape Shape Slice Split Squeeze Transpose "
    "Unsqueeze"
)
_ML_ELEMENTWISE = _ops(
    "ArrayFeatureExtractor Binarizer CategoryMapper FeatureVectorizer Imputer LabelEncoder "
    "Normalizer OneHotEncoder Scaler ZipMap"
)
_TREES = frozenset({"TreeEnsemble", "TreeEnsembleClassifier", "TreeEnsembleRegressor"})
#: ONNX Runtime folds Constant into initializers and drops Identity: neither runs a kernel
_NO_KERNEL = frozenset({"Constant", "Identity"})


@dataclass(frozen=True, kw_only=True)
class GraphCost:
    """The work of one input row through a Bundle graph (the batch dimension is symbolic)."""

    #: FLOPs (int8 ops included) per row; see the module docstring for what counts
    flops_per_row: float
    #: flops_per_row by op type
    by_op: dict[str, float]
    #: op types whose work could not be counted (counted as 0 in flops_per_row)
    uncounted: tuple[str, ...]
    bytes_per_row_in: int
    bytes_per_row_out: int
    #: bytes per row of every tensor the nodes write (each written once)
    activation_bytes_per_row: int
    #: initializers plus every array and tensor attribute (tree ensembles, encoders, Constant)
    weight_bytes: int
    #: nodes that run a kernel (all but Constant and Identity): a proxy for launches
    nodes: int
    #: op types ONNX Runtime runs only on the CPU (the ai.onnx.ml domain has no CUDA kernels)
    host_ops: tuple[str, ...]

    @property
    def int8_ops_per_row(self) -> float:
        return sum(v for op, v in self.by_op.items() if op in _INT8)

    @property
    def host_ops_per_row(self) -> float:
        """The ai.onnx.ml share of flops_per_row: branchy scalar work (tree comparisons,
        encoder lookups) that no vector unit speeds up."""
        return sum(self.by_op.get(op, 0.0) for op in self.host_ops)


def graph_cost(graph: bytes) -> GraphCost:
    """Count the work of ``graph``, a serialized ONNX ModelProto (``Bundle.graph``).

    Example:
        >>> cost = graph_cost(load_bundle("out/fraud-bundle").graph)  # doctest: +SKIP
        >>> cost.flops_per_row, cost.uncounted  # doctest: +SKIP
        (2624.0, ())
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_from_string(graph)
        if not model.graph.node:
            raise BundleError("the graph has no nodes: it is not a serialized ONNX model")
        one, two = _infer(model, 1), _infer(model, 2)
    except (DecodeError, onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise BundleError(f"cannot read the ONNX graph to count its FLOPs: {e}") from e

    def per_row(name: str) -> int | None:
        # elements at batch 2 minus batch 1: parts that do not grow with the batch count 0
        if name not in one or name not in two:
            return None
        return math.prod(two[name][0]) - math.prod(one[name][0])

    def row_bytes(name: str) -> int:
        return (per_row(name) or 0) * _itemsize(one[name][1]) if name in one else 0

    by_op: dict[str, float] = {}
    uncounted: set[str] = set()
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        flops = _node_flops(node, per_row, lambda n: one[n][0] if n in one else None)
        if flops is None:
            uncounted.add(node.op_type)
        else:
            by_op[node.op_type] = by_op.get(node.op_type, 0.0) + flops
    nodes = model.graph.node
    return GraphCost(
        flops_per_row=sum(by_op.values()),
        by_op=by_op,
        uncounted=tuple(sorted(uncounted)),
        bytes_per_row_in=sum(row_bytes(i.name) for i in model.graph.input if i.name not in inits),
        bytes_per_row_out=sum(row_bytes(o.name) for o in model.graph.output),
        activation_bytes_per_row=sum(row_bytes(o) for n in nodes for o in n.output),
        weight_bytes=sum(_tensor_bytes(t) for t in model.graph.initializer)
        + sum(_attribute_bytes(a) for n in nodes for a in n.attribute),
        nodes=sum(n.op_type not in _NO_KERNEL for n in nodes),
        host_ops=tuple(sorted({n.op_type for n in nodes if n.domain == "ai.onnx.ml"})),
    )


def _infer(model: onnx.ModelProto, batch: int) -> dict[str, tuple[tuple[int, ...], int]]:
    """(shape, element type) of every tensor whose shape is known once every symbolic input
    dimension is set to ``batch``."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = batch
    graph = onnx.shape_inference.infer_shapes(fixed, data_prop=True).graph
    known: dict[str, tuple[tuple[int, ...], int]] = {
        i.name: (tuple(i.dims), i.data_type) for i in graph.initializer
    }
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if value.type.HasField("tensor_type") and all(d.HasField("dim_value") for d in dims):
            known[value.name] = (tuple(d.dim_value for d in dims), tensor.elem_type)
    return known


def _node_flops(
    node: onnx.NodeProto,
    per_row: Callable[[str], int | None],
    shape: Callable[[str], tuple[int, ...] | None],
) -> float | None:
    """FLOPs per row of one node, or None when they cannot be counted."""
    import onnx

    op = node.op_type
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if op in _TREES:
        try:
            return _tree_comparisons(attrs)
        except (KeyError, IndexError) as exc:
            raise BundleError(f"tree ensemble '{node.name}' is malformed: {exc!r}") from exc
    if op in ("LinearClassifier", "LinearRegressor"):
        return 2.0 * len(attrs.get("coefficients", []))
    if op in _MOVE:
        return 0.0
    out = per_row(node.output[0]) if node.output else None
    if op in _MATMUL:
        a = shape(node.input[0])
        if not a or out is None:
            return None
        k = a[0] if op == "Gemm" and attrs.get("transA", 0) else a[-1]
        has_bias = op == "Gemm" and len(node.input) > 2 and bool(node.input[2])
        return 2.0 * k * out + (out if has_bias else 0)
    if op in _ELEMENTWISE:
        return None if out is None else float(out)
    if op in _REDUCE:
        first = per_row(node.input[0])
        return None if first is None else float(first)
    if op in _ML_ELEMENTWISE:
        sizes = [n for n in (per_row(node.input[0]), out) if n is not None]
        return float(max(sizes)) if sizes else None
    return None


def _tree_comparisons(attrs: dict[str, Any]) -> float:
    """Comparisons per row: each tree's mean root-to-leaf depth (over its leaves), summed."""
    children: Callable[[int], list[int | None]]  # None: a leaf child; [] : the node is a leaf
    if "tree_roots" in attrs:  # TreeEnsemble (ai.onnx.ml 5): leaves are numbered apart
        t_ids, f_ids = attrs["nodes_truenodeids"], attrs["nodes_falsenodeids"]
        t_leaf, f_leaf = attrs["nodes_trueleafs"], attrs["nodes_falseleafs"]
        roots = list(attrs["tree_roots"])

        def children(i: int) -> list[int | None]:
            return [None if t_leaf[i] else t_ids[i], None if f_leaf[i] else f_ids[i]]

    else:  # TreeEnsembleClassifier / Regressor: leaves are nodes of mode LEAF
        trees, ids, modes = attrs["nodes_treeids"], attrs["nodes_nodeids"], attrs["nodes_modes"]
        t_ids, f_ids = attrs["nodes_truenodeids"], attrs["nodes_falsenodeids"]
        index = {(t, n): i for i, (t, n) in enumerate(zip(trees, ids, strict=True))}
        split = [i for i, m in enumerate(modes) if m != b"LEAF"]
        reached = {(trees[i], t_ids[i]) for i in split} | {(trees[i], f_ids[i]) for i in split}
        roots = [i for i, key in enumerate(zip(trees, ids, strict=True)) if key not in reached]

        def children(i: int) -> list[int | None]:
            if modes[i] == b"LEAF":
                return []
            return [index[trees[i], t_ids[i]], index[trees[i], f_ids[i]]]

    limit = len(attrs.get("nodes_truenodeids", ()))
    total = 0.0
    for root in roots:
        depths: list[int] = []
        stack = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            if depth > limit:
                raise BundleError("a tree ensemble in the graph has a cycle; re-export the model")
            kids = children(node)
            depths += [depth] if not kids else [depth + 1 for k in kids if k is None]
            stack += [(k, depth + 1) for k in kids if k is not None]
        total += sum(depths) / len(depths)
    return total


def _itemsize(elem_type: int) -> int:
    import onnx

    if elem_type == onnx.TensorProto.STRING:
        return _STRING_BYTES
    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    import onnx

    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    return int(math.prod(tensor.dims)) * _itemsize(tensor.data_type)


def _attribute_bytes(attr: onnx.AttributeProto) -> int:
    tensors = [attr.t] if attr.HasField("t") else list(attr.tensors)
    strings = sum(len(s) for s in attr.strings)
    return sum(map(_tensor_bytes, tensors)) + 8 * len(attr.ints) + 4 * len(attr.floats) + strings
