"""What every route shares: API key, body limit, metrics, the OpenAPI document, HTTP details."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import cli_env, free_port
from tests.serving.conftest import Running, running_server
from tests.serving.test_mlflow import ROWS
from tests.serving.test_oip import post


def request(
    server: Running,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    return http_call(server.port, method, path, body, headers)


def test_an_api_key_guards_everything_but_the_probes(models_home: Path) -> None:
    key = "s3cret-key"
    with running_server(["mixed"], models_home, api_key=key) as server:
        body = json.dumps({"dataframe_records": ROWS}).encode()
        json_type = {"content-type": "application/json"}
        for path in ("/v2/health/live", "/v2/health/ready", "/ping"):
            assert request(server, "GET", path)[0] == 200
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"x-api-key": key[:-1]},
            {"authorization": key},
        ):
            status, data, got = request(
                server, "POST", "/invocations", body, {**json_type, **headers}
            )
            assert status == 401
            assert "API key" in json.loads(data)["error"]
            assert got["www-authenticate"].startswith("Bearer")
        assert request(server, "GET", "/metrics")[0] == 401
        assert request(server, "GET", "/v2/models/mixed")[0] == 401
        for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
            assert request(server, "POST", "/invocations", body, {**json_type, **headers})[0] == 200


def test_a_body_over_the_limit_gets_413_before_it_is_read(models_home: Path) -> None:
    with running_server(["mixed"], models_home, max_body=1000) as server:
        big = json.dumps({"dataframe_records": ROWS * 20}).encode()
        status, data, _ = request(
            server, "POST", "/invocations", big, {"content-type": "application/json"}
        )
        assert status == 413
        assert "over this server's limit of 1000 bytes" in json.loads(data)["error"]
        # the server answered from the headers: a client that announces a huge body and
        # never sends it gets its 413 at once
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")
        small = json.dumps({"dataframe_records": ROWS[:1]}).encode()
        assert (
            request(server, "POST", "/invocations", small, {"content-type": "application/json"})[0]
            == 200
        )


def test_metrics_count_requests_rows_and_batches(mixed_server: Running) -> None:
    for _ in range(3):
        assert post(mixed_server, "/invocations", {"dataframe_records": ROWS})[0] == 200
    assert post(mixed_server, "/invocations", b"{", {"content-type": "application/json"})[0] == 400
    status, data, headers = request(mixed_server, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(data.decode())
        for s in family.samples
    }
    ok = ("tandem_requests_total", (("code", "200"), ("model", "mixed"), ("protocol", "mlflow")))
    bad = ("tandem_requests_total", (("code", "400"), ("model", "mixed"), ("protocol", "mlflow")))
    assert samples[ok] == 3 and samples[bad] == 1
    assert samples[("tandem_rows_total", (("model", "mixed"),))] == 6
    assert samples[("tandem_batch_rows_sum", (("model", "mixed"),))] == 6
    assert samples[("tandem_model_version", (("model", "mixed"),))] == 1
    assert samples[("tandem_ready", ())] == 1
    assert samples[("tandem_cost_per_row_seconds", (("model", "mixed"),))] > 0
    assert samples[("tandem_compute_cost_per_row_seconds", (("model", "mixed"),))] > 0
    assert samples[("tandem_request_seconds_count", (("model", "mixed"),))] == 3


def test_the_openapi_document_is_valid_and_every_path_is_routed(mixed_server: Running) -> None:
    status, data, _ = request(mixed_server, "GET", "/openapi.json")
    assert status == 200
    document = json.loads(data)
    validate(document)
    for path, operations in document["paths"].items():
        concrete = path.replace("{model}", "mixed").replace("{version}", "1")
        for method in operations:
            got, body, _ = request(
                mixed_server, method.upper(), concrete, b"{}", {"content-type": "application/json"}
            )
            assert got != 404 or b"no route" not in body, (method, path)
            assert got != 405, (method, path)


def test_gzip_bodies_keep_alive_and_pipelining(mixed_server: Running) -> None:
    body = gzip.compress(json.dumps({"dataframe_records": ROWS}).encode())
    status, data, _ = request(
        mixed_server, "POST", "/invocations", body,
        {"content-type": "application/json", "content-encoding": "gzip"},
    )  # fmt: skip
    assert status == 200 and len(json.loads(data)["predictions"]) == 2
    # three requests written at once on one connection come back in order
    one = json.dumps({"dataframe_records": ROWS[:1]}).encode()
    pipelined = (
        b"".join(
            b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(one), one)
            for _ in range(2)
        )
        + b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", mixed_server.port), timeout=5) as sock:
        sock.sendall(pipelined)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert (
        received.index(b"predictions")
        < received.rindex(b"predictions")
        < received.index(b'{"live":true}')
    )


def test_malformed_http_gets_400_and_the_server_stays_up(mixed_server: Running) -> None:
    with socket.create_connection(("127.0.0.1", mixed_server.port), timeout=5) as sock:
        sock.sendall(b"NOT-HTTP\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert request(mixed_server, "GET", "/v2/health/live")[0] == 200


def test_the_asgi_adapter_serves_the_same_app_under_uvicorn(models_home: Path) -> None:
    port = free_port()
    env = {**cli_env(models_home), "TANDEM_SERVE_MODELS": "mixed"}
    command = [sys.executable, "-m", "uvicorn", "--factory", "tandem.serving.asgi:create_app",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = wait_until_ready(port, proc)
        assert ready, proc.stdout.read().decode() if proc.stdout else ""
        status, data, headers = http_call(port, "POST", "/invocations", json.dumps({"dataframe_records": ROWS}).encode(),
                                          {"content-type": "application/json"})  # fmt: skip
        assert status == 200 and headers["x-tandem-model"] == "mixed:1"
        assert len(json.loads(data)["predictions"]) == 2
        assert http_call(port, "GET", "/v2/models/nope")[0] == 404
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def http_call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def wait_until_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            if http_call(port, "GET", "/v2/health/ready")[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("refs", [["mixed", "mixed@champion"], []])
def test_serving_a_model_twice_or_none_is_refused(models_home: Path, refs: list[str]) -> None:
    from tandem.errors import UsageError
    from tandem.serving import Server

    with pytest.raises(UsageError, match="serve each model once|name at least one model"):
        Server(refs)


def test_head_answers_carry_no_body_and_keep_the_connection_usable(mixed_server: Running) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", mixed_server.port, timeout=10)
    for _ in range(2):
        conn.request("HEAD", "/ping")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
    conn.request("GET", "/v2/health/live")
    assert json.loads(conn.getresponse().read()) == {"live": True}
    conn.close()


def test_an_endless_request_head_gets_431_and_is_cut_off(mixed_server: Running) -> None:
    with socket.create_connection(("127.0.0.1", mixed_server.port), timeout=5) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nx-big: " + b"a" * 20_000 + b"\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert request(mixed_server, "GET", "/v2/health/live")[0] == 200


def test_requests_no_wait_could_admit_are_told_so_not_429(models_home: Path) -> None:
    from tandem.serving import BatcherConfig

    with running_server(["num"], models_home, batching=BatcherConfig(max_queue_rows=10)) as server:
        rows = [[0.0] * 6] * 11
        status, answer, headers = post(server, "/invocations", {"instances": rows})
        assert status == 413 and "queues at most 10" in answer["message"]
        assert "retry-after" not in headers
        status, answer, _ = post(
            server, "/invocations?timeout_ms=0.000001", {"instances": rows[:1]}
        )
        assert status == 400 and "more than its 0 ms deadline" in answer["message"]
