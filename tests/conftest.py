"""Shared fixtures: a private TANDEM_HOME per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem import Registry, Settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TANDEM_HOME for this test, also seen by subprocesses."""
    path = tmp_path / "home"
    monkeypatch.setenv("TANDEM_HOME", str(path))
    monkeypatch.delenv("TANDEM_REGISTRY", raising=False)
    return path


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    with Registry(Settings(home=home)) as reg:
        yield reg
