"""Load the benchmarked models once per server process: the Bundle's ONNX graph, 1 thread."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

ENV = "BENCH_SERVE_MODELS"


@dataclass
class Served:
    """One model: its ONNX Runtime session and the names the request path needs."""

    name: str
    session: Any  # onnxruntime.InferenceSession, built by tandem.load with 1 intra-op thread
    input_name: str
    output_name: str
    n_features: int
    keep: Any  # the Predictor that owns the session

    def run(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities for an (n, k) float64 matrix in signature order.

        The graph takes the (k, n) column-major layout, i.e. the transpose: a view, no copy.
        """
        out: np.ndarray = self.session.run([self.output_name], {self.input_name: matrix.T})[0]
        return out


def load_models() -> dict[str, Served]:
    import tandem

    models: dict[str, Served] = {}
    for name in os.environ.get(ENV, "w1 gbdt").split():
        predictor = tandem.load(name, threads=1)
        session = predictor._session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise RuntimeError(f"{name}: expected one numeric matrix input, got {len(inputs)}")
        models[name] = Served(
            name=name,
            session=session,
            input_name=inputs[0].name,
            output_name=predictor.manifest.output,
            n_features=len(predictor.input_names),
            keep=predictor,
        )
    return models


def oip_infer(model: Served, body: bytes) -> bytes:
    """One Open Inference Protocol v2 request body in, one response body out: orjson, the
    graph run inline, probabilities out (what the bare ASGI and RSGI apps do per request)."""
    request = orjson.loads(body)
    tensor = request["inputs"][0]
    rows, cols = tensor["shape"]
    if cols != model.n_features:
        raise ValueError(f"expected {model.n_features} features, got {cols}")
    matrix = np.array(tensor["data"], dtype=np.float64).reshape(rows, cols)
    probabilities = model.run(matrix)
    response = {
        "model_name": model.name,
        "outputs": [
            {
                "name": "probabilities",
                "shape": list(probabilities.shape),
                "datatype": "FP64",
                "data": probabilities.ravel(),
            }
        ],
    }
    return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
