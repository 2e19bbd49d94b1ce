"""Following an alias while serving: load and warm the new version beside the old, switch at
once, drain the old; no request fails. Readiness waits for the warm-up.

Timing never decides a verdict here: the warm-up is held on a gate where a test needs to see
the server mid-swap or mid-start, and load runs until the test has seen what it waits for
(the load generator stops on SIGINT), within generous time limits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tandem
from tandem.serving import ServeOptions, Server, models
from tandem.serving.batcher import OverloadedError
from tests.helpers import ROOT, TANDEM, cli_env, finish, free_port
from tests.serving.conftest import running_server
from tests.serving.test_app import http_call

pytestmark = pytest.mark.slow

LOADGEN = ROOT / "src" / "tandem" / "serving" / "loadgen.py"
#: two rows of the all-numeric model `num` (columns f0..f5), as one OIP matrix input
INFER = {
    "inputs": [
        {
            "name": "input",
            "shape": [2, 6],
            "datatype": "FP64",
            "data": [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 1.0, 0.0, -1.0, 0.5, 0.25, -0.75],
        }
    ]
}


def infer(port: int, path: str = "/v2/models/num/infer") -> tuple[int, dict[str, Any], str]:
    status, data, headers = http_call(
        port, "POST", path, json.dumps(INFER).encode(), {"content-type": "application/json"}
    )
    return status, json.loads(data), headers.get("x-tandem-model", "")


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, data, _ = http_call(port, "GET", "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(data.decode())
        for s in family.samples
    }


def answered(port: int, code: str = "200") -> float:
    key = ("tandem_requests_total", (("code", code), ("model", "num"), ("protocol", "v2")))
    return metrics(port).get(key, 0.0)


def served_version(port: int) -> list[str]:
    status, data, _ = http_call(port, "GET", "/v2/models/num")
    assert status == 200
    return list(json.loads(data)["versions"])


def wait_for(what: Callable[[], bool], timeout: float = 30.0, message: str = "") -> None:
    end = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < end, f"timed out waiting for {message or what}"
        time.sleep(0.02)


def move_champion(home: Path, version: int) -> None:
    with tandem.Registry(tandem.Settings(home=home)) as registry:
        registry.set_alias("num", version, "champion")


class WarmupGate:
    """Holds every warm-up started after :meth:`install` at its end, until :meth:`release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        real = models._warm

        def held(*args: Any, **kwargs: Any) -> None:
            real(*args, **kwargs)
            self.entered.set()
            if not self.gate.wait(60):
                raise TimeoutError("the test never released the warm-up")

        monkeypatch.setattr(models, "_warm", held)

    def release(self) -> None:
        self.gate.set()


@contextmanager
def load(
    url: str, folder: Path, *, connections: int = 4, limit_s: float = 60.0
) -> Iterator[dict[str, Any]]:
    """Closed-loop load from the load generator (a subprocess) until the block ends; the
    generator's report fills the yielded dict afterwards."""
    report: dict[str, Any] = {}
    body = folder / "infer.json"
    body.write_text(json.dumps(INFER))
    proc = subprocess.Popen(
        [sys.executable, str(LOADGEN), "--url", url, "--closed", "--duration", str(limit_s),
         "--connections", str(connections), "--track-header", "x-tandem-model",
         "--body-file", str(body)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield report
    finally:
        code, out, err = finish(proc, sig=signal.SIGINT, timeout=30)
        assert code == 0, err
        report.update(json.loads(out))


def test_the_server_follows_the_alias_under_load_without_a_failed_request(
    models_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_server(["num@champion"], models_home, poll_s=0.2) as server:
        port = server.port
        assert served_version(port) == ["1"]
        first = server.server.models[0].runner
        assert first is not None and first.version == 1
        gate = WarmupGate(monkeypatch)  # the next warm-up (version 2's) waits for the test
        with load(f"{server.url}/v2/models/num/infer", tmp_path) as report:
            wait_for(lambda: answered(port) >= 200, message="load on version 1")
            move_champion(models_home, 2)
            assert gate.entered.wait(30), "version 2 was never loaded"
            # version 2 is loaded and warm but held: version 1 answers, readiness holds
            assert served_version(port) == ["1"]
            status, body, ref = infer(port)
            assert (status, body["model_version"], ref) == (200, "1", "num:1")
            assert http_call(port, "GET", "/v2/health/ready")[0] == 200
            before = answered(port)
            wait_for(lambda: answered(port) >= before + 50, message="load during the warm-up")
            gate.release()
            wait_for(lambda: served_version(port) == ["2"], message="the switch to version 2")
            after = answered(port)
            wait_for(lambda: answered(port) >= after + 200, message="load on version 2")

        # every request of the load succeeded, and none was left unanswered
        assert report["status"] == {"200": report["completed"]}, report
        assert report["errors"] == report["unfinished"] == report["client_dropped"] == 0, report
        # each connection saw version 1, then version 2, and never version 1 again
        runs = report["headers"]["x-tandem-model"]
        assert len(runs) == 4
        assert all(r in (["num:1", "num:2"], ["num:1"], ["num:2"]) for r in runs), runs
        assert ["num:1", "num:2"] in runs, runs

        status, body, ref = infer(port)
        assert (status, body["model_version"], ref) == (200, "2", "num:2")
        assert infer(port, "/v2/models/num/versions/2/infer")[0] == 200
        status, body, _ = infer(port, "/v2/models/num/versions/1/infer")
        assert status == 404 and "serves version 2" in body["error"]
        samples = metrics(port)
        assert samples[("tandem_model_swaps_total", (("model", "num"),))] == 1
        assert samples[("tandem_model_version", (("model", "num"),))] == 2
        # the old version drained: its batcher holds nothing and refuses new work
        assert first.batcher.queued_rows == 0
        with pytest.raises(OverloadedError, match="shutting down"):
            first.batcher.admit(1, time.monotonic() + 10)


def test_the_ledger_books_each_version_what_it_served(models_home: Path) -> None:
    # a long ledger interval: without the swap's own record, version 2 would be booked all
    with running_server(["num@champion"], models_home, poll_s=0.1,
                        ledger_interval_s=3600) as server:  # fmt: skip
        port = server.port
        for _ in range(7):
            assert infer(port)[0] == 200
        move_champion(models_home, 2)
        wait_for(lambda: served_version(port) == ["2"], message="the switch to version 2")
        for _ in range(5):
            assert infer(port)[0] == 200
    with tandem.Registry(tandem.Settings(home=models_home)) as registry:
        first, second = (registry.runs("num", v, phase="serve") for v in (1, 2))
    assert [r.details["kind"] for r in first] == ["startup", "swap"]
    assert sum(r.details["requests"] for r in first) == 7 and first[-1].rows == 14
    assert [r.details["kind"] for r in second] == ["interval"]  # the last, at stop
    assert second[0].details["requests"] == 5 and second[0].rows == 10


def test_a_pinned_version_does_not_follow(models_home: Path) -> None:
    with (
        running_server(["num:1"], models_home, poll_s=0.2) as pinned,
        running_server(["num@champion"], models_home, poll_s=0.2) as following,
    ):
        move_champion(models_home, 2)
        # the following server has seen the move: the pinned one had as long to see it
        wait_for(lambda: served_version(following.port) == ["2"], message="the follower's swap")
        time.sleep(0.5)  # and a few more of its polls
        assert served_version(pinned.port) == ["1"]
        status, body, ref = infer(pinned.port)
        assert (status, body["model_version"], ref) == (200, "1", "num:1")
        assert infer(pinned.port, "/v2/models/num/versions/1/infer")[0] == 200
        key = ("tandem_model_swaps_total", (("model", "num"),))
        assert metrics(pinned.port).get(key, 0.0) == 0
        assert metrics(following.port)[key] == 1


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_server(["num@champion"], models_home, poll_s=0.2) as server:
        tried = threading.Event()
        attempts: list[int] = []

        def broken(*args: Any, **kwargs: Any) -> None:
            attempts.append(1)
            tried.set()
            raise RuntimeError("warm-up exploded")

        monkeypatch.setattr(models, "_warm", broken)
        move_champion(models_home, 2)
        assert tried.wait(30)
        time.sleep(0.5)  # a few more polls: the version that failed is not tried again
        assert len(attempts) == 1
        assert served_version(server.port) == ["1"]
        status, body, ref = infer(server.port)
        assert (status, body["model_version"], ref) == (200, "1", "num:1")
        assert http_call(server.port, "GET", "/v2/health/ready")[0] == 200
        key = ("tandem_model_swaps_total", (("model", "num"),))
        assert metrics(server.port).get(key, 0.0) == 0


def test_readiness_is_false_until_the_warm_up_ends(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = WarmupGate(monkeypatch)
    registry = tandem.Registry(tandem.Settings(home=models_home))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = Server(["num@champion"], ServeOptions(port=0), registry=registry)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
        port = server.port
        assert gate.entered.wait(30), "the warm-up never ran"
        # bound, loaded, warmed but not past the warm-up: live, not ready, nothing served
        assert http_call(port, "GET", "/v2/health/live")[0] == 200
        for path in ("/v2/health/ready", "/ping"):
            status, _, headers = http_call(port, "GET", path)
            assert status == 503 and headers.get("retry-after") == "1", path
        status, body, _ = infer(port)
        assert status == 503 and "warming up" in body["error"]
        assert metrics(port)[("tandem_ready", ())] == 0
        gate.release()
        wait_for(lambda: http_call(port, "GET", "/v2/health/ready")[0] == 200)
        # ready means warm: the very next request is answered
        status, body, ref = infer(port)
        assert (status, body["model_version"], ref) == (200, "1", "num:1")
        assert metrics(port)[("tandem_ready", ())] == 1
    finally:
        gate.release()
        asyncio.run_coroutine_threadsafe(server.stop(grace=2), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        registry.close()


def test_a_served_process_is_live_at_once_and_ready_only_when_it_answers(
    models_home: Path,
) -> None:
    """The real CLI: from the first answer on, live is 200 and ready is 503 (with Retry-After)
    or 200; ready never goes back to 503, and once it is 200 inference succeeds at once."""
    port = free_port()
    proc = subprocess.Popen(
        [*TANDEM, "serve", "num@champion", "--port", str(port)], env=cli_env(models_home),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen: list[int] = []
        end = time.monotonic() + 60
        while not seen or seen[-1] != 200:
            assert time.monotonic() < end and proc.poll() is None, "the server never got ready"
            try:
                live = http_call(port, "GET", "/v2/health/live")[0]
                status, _, headers = http_call(port, "GET", "/v2/health/ready")
            except OSError:  # not bound yet: nothing answers
                assert not seen, "the server stopped answering after it had bound"
                time.sleep(0.02)
                continue
            assert live == 200
            assert status in (200, 503), status
            if status == 503:
                assert headers.get("retry-after") == "1"
            seen.append(status)
        status, body, ref = infer(port)
        assert (status, body["model_version"], ref) == (200, "1", "num:1")
        assert http_call(port, "GET", "/v2/health/ready")[0] == 200
    finally:
        code, _, err = finish(proc)
    assert code == 0, err
