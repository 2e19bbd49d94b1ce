"""Fixtures for the serving tests: trained models in a shared registry, and a real server on
127.0.0.1 running in a thread of the test process (or as a subprocess, in the e2e tests)."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import tandem
from tandem import Registry, Settings
from tandem.serving import ServeOptions, Server
from tests.helpers import mixed_table


def numeric_table(n: int = 800, *, k: int = 6, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
    return pa.table({**{f"f{i}": X[:, i] for i in range(k)}, "y": y})


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with ``mixed`` (gbdt, every column kind) and ``num`` (an all-numeric MLP,
    versions 1 and 2, alias ``champion`` on 1), trained once per session."""
    home = tmp_path_factory.mktemp("serving-home")
    with Registry(Settings(home=home)) as reg:
        tandem.train(mixed_table(400), target="target", name="mixed", model="gbdt",
                     params={"max_rounds": 40}, registry=reg)  # fmt: skip
        for seed in (0, 1):
            tandem.train(numeric_table(seed=seed), target="y", name="num", model="mlp",
                         params={"hidden": 32}, time_budget=5, seed=seed, registry=reg)  # fmt: skip
        reg.set_alias("num", 1, "champion")
    return home


@pytest.fixture
def serving_home(trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the trained registry (tests move aliases and add versions)."""
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    monkeypatch.setenv("TANDEM_HOME", str(home))
    monkeypatch.delenv("TANDEM_REGISTRY", raising=False)
    return home


@dataclass
class Running:
    server: Server
    loop: asyncio.AbstractEventLoop

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def running_server(refs: list[str], home: Path, **options: Any) -> Iterator[Running]:
    """A real server on 127.0.0.1 (a free port) in a background thread; stopped on exit."""
    registry = Registry(Settings(home=home))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server: Server | None = None
    try:
        options.setdefault("port", 0)

        async def start() -> Server:
            s = Server(refs, ServeOptions(**options), registry=registry)
            await s.start()
            await asyncio.wait_for(s.ready.wait(), 30)
            return s

        server = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        yield Running(server, loop)
    finally:
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.stop(grace=2), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        registry.close()


@pytest.fixture
def mixed_server(serving_home: Path) -> Iterator[Running]:
    with running_server(["mixed"], serving_home) as running:
        yield running
