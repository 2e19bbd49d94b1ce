"""Shared fixtures: a private TANDEM_HOME per test; trained models for the inference tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import tandem
from tandem import Registry, Settings
from tests.helpers import mixed_table, numeric_table


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
def models_home(trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the trained registry (tests move aliases and add versions)."""
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    monkeypatch.setenv("TANDEM_HOME", str(home))
    monkeypatch.delenv("TANDEM_REGISTRY", raising=False)
    return home
