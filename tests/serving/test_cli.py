"""`tandem serve` as users run it: a real process, stopped by signal, with honest exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import TANDEM, cli_env, finish, free_port
from tests.serving.test_app import http_call, wait_until_ready


def start(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*TANDEM, "serve", *args], env=env or cli_env(home), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def stop(proc: subprocess.Popen[str], *, signal_it: bool = True) -> tuple[int, str]:
    code, _, err = finish(proc, sig=signal.SIGTERM if signal_it else None)
    return code, err


@pytest.mark.slow
def test_serve_starts_on_localhost_answers_and_stops_cleanly_on_sigterm(models_home: Path) -> None:
    port = free_port()
    proc = start(models_home, "mixed", "num@champion", "--port", str(port))
    try:
        assert wait_until_ready(port, proc), proc.stderr.read() if proc.stderr else ""
        status, data, _ = http_call(port, "GET", "/v2/models/num")
        assert status == 200 and json.loads(data)["versions"] == ["1"]
        # the serving process holds no training library
        maps = Path(f"/proc/{proc.pid}/maps")
        if maps.exists():
            loaded = maps.read_text()
            assert not re.search(r"libtorch|lib_lightgbm|sklearn", loaded)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert f"serving mixed:1, num:1 on http://127.0.0.1:{port}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no model named 'nope'"),
        (["mixed@gold"], "alias"),
        (["mixed", "--timeout-ms", "0"], "timeout must be positive"),
        (
            ["mixed", "--api-key-env", "TANDEM_TEST_UNSET_KEY"],
            "TANDEM_TEST_UNSET_KEY, which is not set",
        ),
        (["mixed", "--log-sample", "2"], "between 0 (off) and 1"),
        (["mixed", "--log-flush-s", "0"], "--log-flush-s"),
        (["mixed", "--log-flush-rows", "0"], "--log-flush-rows"),
    ],
)
def test_bad_usage_exits_2_with_a_message(models_home: Path, args: list[str], message: str) -> None:
    proc = start(models_home, *args)
    code, err = stop(proc, signal_it=False)
    assert code == 2
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def test_a_port_in_use_is_a_usage_error(models_home: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = start(models_home, "mixed", "--port", str(port))
        code, err = stop(proc, signal_it=False)
    assert code == 2
    assert "choose another --port" in " ".join(err.split())


def test_a_tampered_bundle_stops_the_server_with_exit_1(models_home: Path) -> None:
    graphs = list((models_home / "artifacts").rglob("mixed/1/model.onnx"))
    assert graphs, "the registry layout changed"
    graphs[0].write_bytes(graphs[0].read_bytes()[:-10])
    proc = start(models_home, "mixed", "--port", str(free_port()))
    code, err = stop(proc, signal_it=False)
    assert code == 1
    assert "mixed/1 is truncated" in err and "Traceback" not in err


def _children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _all_ok(port: int, n: int = 60) -> bool:
    from tandem.serving.loadtest import closed_loop

    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP64", "data": [0.5] * 6}]}
    ).encode()
    result = closed_loop("127.0.0.1", port, "/v2/models/num/infer", [body] * n, concurrency=6)
    return all(status == 200 for status, _, _ in result.answers)


@pytest.mark.slow
def test_processes_share_one_port_and_a_dead_one_is_replaced(models_home: Path) -> None:
    from tandem.config import Settings
    from tandem.registry import Registry

    proc = start(models_home, "num", "--processes", "2", "--port", "0", "--ledger-interval", "0.5")
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not (ready := [x for x in lines if "(ready in" in x]) and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(re.findall(r"127\.0\.0\.1:(\d+)", ready[0])[0])
        first = _children(proc.pid)
        assert len(first) == 2
        assert _all_ok(port)
        # kill each original in turn: the survivors (and then the replacement) keep answering
        for victim in sorted(first):
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                victim in _children(proc.pid) or len(_children(proc.pid)) < 2
            ):
                time.sleep(0.1)
            assert len(_children(proc.pid) - first) >= 1, "no replacement was started"
            assert _all_ok(port)
        workers = _children(proc.pid)
        assert not workers & first
        time.sleep(2.0)  # the replacement loads, then accepts: every answer above was a 200
        assert _all_ok(port)
    finally:
        code, _ = stop(proc)
        reader.join(10)
    err = "".join(lines)
    assert code == 0, err
    assert "2 processes" in err and "starting another" in err and "Traceback" not in err
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived it"
    with Registry(Settings(home=models_home)) as reg:
        runs = reg.runs("num", phase="serve")
    processes = {r.details["server"]["process"] for r in runs}
    assert processes, err
    assert processes == {0, 1}
    assert all(r.details["server"]["processes"] == 2 for r in runs)


def test_processes_must_be_a_sensible_count(models_home: Path) -> None:
    code, err = stop(start(models_home, "num", "--processes", "0"), signal_it=False)
    assert code == 2 and "--processes must be between 1 and 64" in err


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_supervisor(models_home: Path) -> None:
    from tandem.serving.loadtest import announced_port

    proc = start(models_home, "num", "--processes", "2", "--port", "0")
    try:
        announced_port(proc)
        workers = _children(proc.pid)
        assert len(workers) == 2
        proc.kill()  # SIGKILL: no chance to stop them itself
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
            time.sleep(0.1)
        left = [w for w in workers if Path(f"/proc/{w}/stat").exists()
                and Path(f"/proc/{w}/stat").read_text().split(") ")[1][0] != "Z"]  # fmt: skip
        assert left == [], "workers kept serving after their supervisor died"
    finally:
        stop(proc)


@pytest.mark.slow
def test_the_log_is_written_once_flush_rows_wait_not_only_each_interval(
    models_home: Path,
) -> None:
    """``--log-flush-rows`` bounds what the log holds: with an hour's interval, the rows are
    on disk as soon as that many wait, while the server runs."""
    from tandem import Settings
    from tandem.monitoring.predictions import HOT_SUFFIX, log_folder

    port = free_port()
    proc = start(
        models_home, "num", "--port", str(port), "--log-flush-s", "3600",
        "--log-flush-rows", "12",
    )  # fmt: skip
    try:
        assert wait_until_ready(port, proc), proc.stderr.read() if proc.stderr else ""
        row = {f"f{k}": 0.5 for k in range(6)}
        body = json.dumps({"dataframe_records": [row] * 4}).encode()
        folder = log_folder("num", Settings(home=models_home))
        for _ in range(3):  # 12 rows
            status, data, _ = http_call(
                port, "POST", "/invocations", body, {"content-type": "application/json"}
            )
            assert status == 200, data
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not list(folder.glob(f"*/*{HOT_SUFFIX}")):
            time.sleep(0.1)
        assert list(folder.glob(f"*/*{HOT_SUFFIX}")), "no log file while the server runs"
    finally:
        code, err = stop(proc)
    assert code == 0, err
