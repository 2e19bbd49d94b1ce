"""``--engine ray`` writes what the local engine writes: on a Ray instance of 2 CPUs the test
starts and stops itself, and on the local instance the job starts on its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.helpers import TANDEM, cli_env, free_port, mixed_table

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data] (a dev dependency)")


#: a throw-away cluster on 127.0.0.1: no token to hand around (Ray 2.5x turns on token
#: authentication by default for clusters started with ``ray start``)
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


@contextlib.contextmanager
def ray_head(tmp: Path) -> Iterator[str]:
    """``ray start --head --block`` with 2 CPUs in a session of its own; stopped by PID."""
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    # Ray's socket paths live under --temp-dir and must stay under 108 bytes: pytest's
    # tmp_path is too deep
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    log = (tmp / "ray-head.log").open("wb")
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
         "--temp-dir", str(temp), "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=RAY_ENV,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp / "ray-head.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the Ray head did not listen within 90 s")
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # --block: stops the processes it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # anything of its session left over
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def inputs(folder: Path) -> list[Path]:
    """Two CSV files (one row with text in a numeric column) and their ids."""
    folder.mkdir()
    rows = mixed_table(900, seed=11).drop(["target"])
    rows = rows.append_column("id", pa.array(np.arange(900)))
    x1 = [str(v) for v in rows.column("x1").to_pylist()]
    x1[333] = "oops"
    rows = rows.set_column(0, "x1", pa.array(x1))
    paths = [folder / "a.csv", folder / "b.csv"]
    pacsv.write_csv(rows.slice(0, 500), paths[0])
    pacsv.write_csv(rows.slice(500), paths[1])
    return paths


def run(home: Path, paths: list[Path], out: Path, *extra: str) -> None:
    args = [*TANDEM, "batch", "mixed", *[a for p in paths for a in ("--input", str(p))],
            "--output", str(out), "--keep", "id", "--on-error", "null", "--chunk-rows", "128",
            *extra]  # fmt: skip
    env = {**cli_env(home), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_same(local: Path, other: Path) -> None:
    a, b = pq.read_table(local), pq.read_table(other)
    assert a.column_names == b.column_names and a.num_rows == b.num_rows == 900
    for name in ("id", "label"):
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    for name in a.column_names[2:]:
        np.testing.assert_allclose(b.column(name).to_numpy(), a.column(name).to_numpy(), rtol=1e-12)
    rejects = [pq.read_table(p.with_name(f"{p.stem}.rejects.parquet")) for p in (local, other)]
    assert rejects[0].equals(rejects[1])
    assert rejects[0].column("row").to_pylist() == [333]


def test_the_ray_engine_writes_what_the_local_engine_writes(
    models_home: Path, tmp_path: Path
) -> None:
    paths = inputs(tmp_path / "in")
    local = tmp_path / "local.parquet"
    run(models_home, paths, local)
    with ray_head(tmp_path) as address:
        on_cluster = tmp_path / "cluster.parquet"
        run(models_home, paths, on_cluster, "--engine", "ray", "--ray-address", address)
    assert_same(local, on_cluster)
    own = tmp_path / "own.parquet"  # no address: the job starts a local instance and stops it
    run(models_home, paths, own, "--engine", "ray")
    assert_same(local, own)
