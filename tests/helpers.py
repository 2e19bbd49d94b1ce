"""Helpers shared by the tests: small deterministic datasets and the CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]


def mixed_table(
    n: int = 600, *, seed: int = 0, classes: int = 2, regression: bool = False
) -> pa.Table:
    """Numbers with missing values, a string category, a low-cardinality integer, a boolean."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n))
    city = rng.choice(["paris", "lyon", "nice", "lille"], size=n)
    rooms = rng.integers(1, 5, size=n)
    garden = rng.random(n) < 0.5
    signal = 1.5 * x1 - np.nan_to_num(x2) + (city == "paris") + 0.3 * rooms + 0.5 * garden
    if regression:
        target: list[object] = list(signal + rng.normal(scale=0.3, size=n))
    else:
        edges = np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1])
        names = ["low", "mid", "high", "top"][:classes] if classes > 2 else ["no", "yes"]
        target = [names[i] for i in np.searchsorted(edges, signal + rng.normal(scale=0.3, size=n))]
    return pa.table(
        {"x1": x1, "x2": x2, "city": city, "rooms": rooms, "garden": garden, "target": target}
    )


def numeric_table(n: int = 800, *, k: int = 6, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
    return pa.table({**{f"f{i}": X[:, i] for i in range(k)}, "y": y})


def cli_env(home: Path) -> dict[str, str]:
    """Environment for running the `tandem` CLI as a real subprocess."""
    env = dict(os.environ)
    env["TANDEM_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TANDEM_DEBUG", None)
    return env


TANDEM = [sys.executable, "-c", "from tandem.cli import main; main()"]


def finish(
    proc: subprocess.Popen[str], *, sig: int | None = signal.SIGTERM, timeout: float = 15
) -> tuple[int, str, str]:
    """Send ``sig`` (None: none) to a subprocess still running, wait for it, kill it if it
    overstays ``timeout``; returns (exit code, stdout, stderr)."""
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out or "", err or ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
