"""Open Inference Protocol v2 conformance, with the real ``tritonclient[http]`` as the client."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import tandem
from tests.serving.conftest import Running, running_server


def rows(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "x1": rng.normal(size=n),
        "x2": np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n)),
        "city": np.array(["paris", "lyon", "atlantis", "nice", "lille"] * (n // 5 + 1))[:n].astype(
            object
        ),
        "rooms": rng.integers(1, 5, size=n),
        "garden": rng.random(n) < 0.5,
    }


TYPES = {"x1": "FP64", "x2": "FP64", "city": "BYTES", "rooms": "INT64", "garden": "BOOL"}


def inputs(columns: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    out = []
    for name, values in columns.items():
        tensor = triton.InferInput(name, list(values.shape), TYPES[name])
        tensor.set_data_from_numpy(values, binary_data=binary)
        out.append(tensor)
    return out


def expected(home: Path, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with tandem.Registry(tandem.Settings(home=home)) as reg:
        return tandem.load("mixed", registry=reg).predict_columns(dict(columns))


@pytest.fixture
def client(mixed_server: Running) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{mixed_server.port}")


def test_health_and_metadata_come_from_the_bundle(
    client: triton.InferenceServerClient, models_home: Path
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mixed")
    assert client.is_model_ready("mixed", "1")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = client.get_model_metadata("mixed")
    assert meta["versions"] == ["1"]
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("x1", "FP64"), ("x2", "FP64"), ("city", "BYTES"), ("rooms", "BYTES"), ("garden", "BOOL"),
    ]  # fmt: skip
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("label", "BYTES"), ("proba_no", "FP64"), ("proba_yes", "FP64"),
    ]  # fmt: skip
    assert client.get_model_metadata("mixed", "1") == meta


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_predictor_and_echoes_the_id(
    client: triton.InferenceServerClient, models_home: Path, binary: bool
) -> None:
    columns = rows(5)
    result = client.infer(
        "mixed",
        inputs(columns, binary),
        request_id="req-42",
        outputs=[
            triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "proba_yes")
        ],
    )
    want = expected(models_home, columns)
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_version"] == "1"
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == want["label"].tolist()
    np.testing.assert_allclose(result.as_numpy("proba_yes"), want["proba_yes"], rtol=1e-12)
    assert result.as_numpy("proba_no") is None  # not asked for


def test_all_outputs_by_default_and_a_versioned_route(client: triton.InferenceServerClient) -> None:
    result = client.infer("mixed", inputs(rows(3), True), model_version="1")
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["label", "proba_no", "proba_yes"]
    np.testing.assert_allclose(result.as_numpy("proba_no") + result.as_numpy("proba_yes"), 1.0)


def test_client_errors_carry_a_message(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        client.infer("nope", inputs(rows(1), False))
    with pytest.raises(InferenceServerException, match="serves version 1; version 7 is not loaded"):
        client.infer("mixed", inputs(rows(1), False), model_version="7")
    lacking = {k: v for k, v in rows(2).items() if k != "city"}
    with pytest.raises(InferenceServerException, match=r"missing column\(s\) \['city'\]"):
        client.infer("mixed", inputs(lacking, True))
    with pytest.raises(InferenceServerException, match=r"unknown output\(s\) \['score'\]"):
        client.infer("mixed", inputs(rows(1), True), outputs=[triton.InferRequestedOutput("score")])


def post(
    server: Running, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, raw, headers or {"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else {}, dict(response.getheaders())


def test_a_matrix_input_in_signature_order_and_nested_data(models_home: Path) -> None:
    with running_server(["num"], models_home) as server:
        x = np.random.default_rng(0).normal(size=(4, 6))
        with tandem.Registry(tandem.Settings(home=models_home)) as reg:
            want = tandem.load("num", registry=reg).predict(x)
        for data in (x.ravel().tolist(), x.tolist()):  # flat and row-major nested
            status, body, headers = post(server, "/v2/models/num/infer", {
                "id": 7, "inputs": [{"name": "input", "shape": [4, 6], "datatype": "FP64", "data": data}],
            })  # fmt: skip
            assert status == 200, body
            assert body["id"] == "7"
            assert headers["x-tandem-model"] == "num:2"
            out = {o["name"]: o for o in body["outputs"]}
            assert out["label"]["datatype"] == "INT64"
            assert out["label"]["data"] == want["label"].tolist()
            np.testing.assert_allclose(out["proba_1"]["data"], want["proba_1"], rtol=1e-12)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        ({"inputs": []}, 'non-empty "inputs" list'),
        ({"inputs": [{"name": "x1", "shape": [2], "datatype": "FP64", "data": [1.0]}]}, "shape [2] holds 2 elements but 1 were sent"),
        ({"inputs": [{"name": "x1", "shape": [1], "datatype": "FP128", "data": [1.0]}]}, "datatype 'FP128' is not one of"),
        ({"inputs": [{"name": "x1", "shape": [1], "datatype": "FP64", "data": ["a"]}]}, "needs numbers"),
        ({"inputs": [{"name": "x1", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}, "has shape [1, 2]"),
        ({"inputs": [{"name": "x1", "shape": [1], "datatype": "FP64", "data": [1]}], "parameters": {"timeout_ms": "soon"}}, "timeout_ms must be a number"),
    ],
)  # fmt: skip
def test_bad_bodies_get_400_with_a_message_and_no_trace(
    mixed_server: Running, body: Any, message: str
) -> None:
    status, answer, _ = post(mixed_server, "/v2/models/mixed/infer", body)
    assert status == 400
    assert set(answer) == {"error"}
    assert message in answer["error"]
    assert "Traceback" not in answer["error"]


def test_routes_and_methods(mixed_server: Running) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", mixed_server.port, timeout=10)

    def get(path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
        conn.request(method, path)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}

    assert get("/v2/health/live") == (200, {"live": True})
    assert get("/v2/health/ready") == (200, {"ready": True})
    assert get("/v2/models/mixed/ready") == (200, {"name": "mixed", "ready": True})
    assert get("/v2/models/mixed/versions/2/ready")[0] == 404
    status, body = get("/v2/models/mixed/infer")
    assert status == 405 and "use POST" in body["error"]
    status, body = get("/v2/nothing")
    assert status == 404 and "/openapi.json" in body["error"]
    conn.close()


def test_zero_rows_give_empty_outputs(mixed_server: Running) -> None:
    inputs = [{"name": n, "shape": [0], "datatype": t, "data": []} for n, t in TYPES.items()]
    status, body, _ = post(mixed_server, "/v2/models/mixed/infer", {"inputs": inputs})
    assert status == 200, body
    assert [(o["name"], o["shape"], o["data"]) for o in body["outputs"]] == [
        ("label", [0], []), ("proba_no", [0], []), ("proba_yes", [0], []),
    ]  # fmt: skip


def test_columns_of_different_lengths_are_refused_not_truncated(mixed_server: Running) -> None:
    columns = {k: v.tolist() for k, v in rows(3).items()}
    columns["city"] = columns["city"][:2]
    inputs = [
        {"name": n, "shape": [len(v)], "datatype": TYPES[n], "data": v} for n, v in columns.items()
    ]
    status, body, _ = post(mixed_server, "/v2/models/mixed/infer", {"inputs": inputs})
    assert status == 400 and "different lengths" in body["error"]


def test_an_explicit_json_output_wins_over_binary_data_output(mixed_server: Running) -> None:
    inputs = [
        {"name": n, "shape": [1], "datatype": t, "data": v}
        for (n, t), v in zip(TYPES.items(), [0.5, 1.0, "paris", 2, True], strict=True)
    ]
    status, body, headers = post(mixed_server, "/v2/models/mixed/infer", {
        "inputs": inputs, "parameters": {"binary_data_output": True},
        "outputs": [{"name": "label", "parameters": {"binary_data": False}}],
    })  # fmt: skip
    assert status == 200 and "inference-header-content-length" not in headers
    assert body["outputs"][0]["data"] in (["yes"], ["no"])
