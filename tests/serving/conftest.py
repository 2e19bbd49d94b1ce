"""Fixtures for the serving tests: trained models in a shared registry, and a real server on
127.0.0.1 running in a thread of the test process (or as a subprocess, in the e2e tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tandem import Registry, Settings
from tandem.serving import ServeOptions, Server


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
def mixed_server(models_home: Path) -> Iterator[Running]:
    with running_server(["mixed"], models_home) as running:
        yield running
