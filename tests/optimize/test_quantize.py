"""int8 quantization of Bundle graphs: the same function, in fewer bits."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tandem.errors import UsageError
from tandem.optimize.quantize import gemm_to_matmul, quantize


def _gemm(n_in: int, n_out: int, trans_b: int, bias: bool, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_out, n_in) if trans_b else (n_in, n_out)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=n_out).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Gemm", inputs, ["h"], transB=trans_b)
    relu = helper.make_node("Relu", ["h"], ["y"])
    graph = helper.make_graph(
        [node, relu], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n_out])], inits,
    )  # fmt: skip
    # IR 9: what this onnxruntime reads (onnx itself now writes newer versions)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _run(model: onnx.ModelProto | bytes, x: np.ndarray) -> np.ndarray:
    raw = model if isinstance(model, bytes) else model.SerializeToString()
    out: np.ndarray = ort.InferenceSession(raw, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    return out


@settings(max_examples=20, deadline=None)
@given(n_in=st.integers(1, 40), n_out=st.integers(1, 40), trans_b=st.sampled_from([0, 1]),
       bias=st.booleans(), seed=st.integers(0, 1000))  # fmt: skip
def test_gemm_becomes_matmul_plus_add_with_the_same_outputs(
    n_in: int, n_out: int, trans_b: int, bias: bool, seed: int
) -> None:
    model = _gemm(n_in, n_out, trans_b, bias, seed)
    converted = gemm_to_matmul(model)
    assert "Gemm" not in {n.op_type for n in converted.graph.node}
    assert "Gemm" in {n.op_type for n in model.graph.node}  # the original is untouched
    x = np.random.default_rng(seed).normal(size=(7, n_in)).astype(np.float32)
    np.testing.assert_allclose(_run(converted, x), _run(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static"])
def test_quantized_graph_is_smaller_and_close(method: str) -> None:
    model = _gemm(64, 256, 1, True, 0)
    x = np.random.default_rng(1).normal(size=(200, 64)).astype(np.float32)
    calibration = [{"x": x[i : i + 50]} for i in range(0, 200, 50)]
    graph = quantize(model.SerializeToString(), method, calibration=calibration,
                     features={"avx2": True})  # fmt: skip
    ops = {n.op_type for n in onnx.load_from_string(graph).graph.node}
    if method == "int8-dynamic":
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    else:
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert len(graph) < 0.5 * model.ByteSize()  # int8 weights: a quarter of float32's bytes
    want, got = _run(model, x), _run(graph, x)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_nothing_to_quantize_and_unknown_methods_are_refused() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )  # fmt: skip
    raw = helper.make_model(graph, ir_version=9).SerializeToString()
    with pytest.raises(UsageError, match="no matrix product to quantize"):
        quantize(raw, "int8-dynamic")
    with pytest.raises(UsageError, match="unknown quantization 'int4'"):
        quantize(raw, "int4")
