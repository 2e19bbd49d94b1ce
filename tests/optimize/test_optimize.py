"""`tandem optimize`: candidates are measured against their original, kept only if better."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from tandem.bundle.store import load_bundle
from tandem.errors import DataError, UsageError
from tandem.optimize import optimize
from tandem.registry import Registry
from tandem.training.train import train
from tests.helpers import TANDEM, cli_env


def _csv(path: Path, n: int = 3000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16))
    y = np.where(x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    pacsv.write_csv(pa.table({**{f"f{i}": x[:, i] for i in range(16)}, "y": y}), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A registry with an MLP m:1 and a GBDT g:1, trained on a CSV file that stays."""
    root = tmp_path_factory.mktemp("opt")
    data = _csv(root / "d.csv")
    home = root / "home"
    with _registry(home) as reg:
        train(data, target="y", name="m", model="mlp",
              params={"hidden": 128, "max_epochs": 6}, registry=reg)  # fmt: skip
        train(data, target="y", name="g", model="gbdt", params={"max_rounds": 20}, registry=reg)
    return home, data


def _registry(home: Path) -> Registry:
    from tandem.config import Settings

    return Registry(Settings(home=home))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static"])
def test_the_verdict_and_the_registry_agree(trained: tuple[Path, Path], method: str) -> None:
    home, _ = trained
    with _registry(home) as reg:
        before = len(reg.list_versions("m"))
        result = optimize("m:1", quantize_method=method, max_loss=1.0, rounds=3, registry=reg)
        report = result.report
        # the reasons follow from the figures, whatever this machine measured
        assert (report.latency_ratio >= 1) == any("batch 1" in r for r in report.reasons)
        assert (report.throughput_ratio <= 1) == any("batch 256" in r for r in report.reasons)
        assert (report.loss_points > 1.0) == any("loses" in r for r in report.reasons)
        assert report.after.size_bytes < report.before.size_bytes
        assert abs(report.loss_points) < 5  # int8 stays close to the original
        assert report.batch_dependent_rows is not None
        if method == "int8-static":
            assert report.batch_dependent_rows == 0  # fixed scales: a row's batch does not matter
        versions = reg.list_versions("m")
        runs = reg.runs("m", 1, phase="optimize")
        assert runs and runs[-1].details["report"]["accepted"] == report.accepted
        if report.accepted:
            assert result.version is not None and len(versions) == before + 1
            v = result.version
            assert v.parent_version == 1 and v.tags == {"optimized": method}
            manifest = load_bundle(v.path, expected_digest=v.digest).manifest
            assert manifest.details["optimization"]["report"]["after"] == json.loads(
                json.dumps(runs[-1].details["report"]["after"])
            )
            assert v.metrics == report.after.metrics
        else:
            assert result.version is None and len(versions) == before


def test_what_cannot_be_optimized_is_refused_clearly(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    home, data = trained
    with _registry(home) as reg:
        with pytest.raises(UsageError, match="no matrix product to quantize"):
            optimize("g:1", quantize_method="int8-dynamic", registry=reg)
        with pytest.raises(UsageError, match="unknown quantization 'int4'"):
            optimize("m:1", quantize_method="int4", registry=reg)
        unlabeled = tmp_path / "u.csv"
        pacsv.write_csv(pacsv.read_csv(data).drop_columns(["y"]), unlabeled)
        with pytest.raises(DataError, match="no column 'y', the target"):
            optimize("m:1", quantize_method="int8-dynamic", data=unlabeled, registry=reg)
        relabeled = tmp_path / "r.csv"
        table = pacsv.read_csv(data)
        pacsv.write_csv(table.set_column(16, "y", pa.array(["maybe"] * table.num_rows)), relabeled)
        with pytest.raises(DataError, match="'maybe' are not classes of the model"):
            optimize("m:1", quantize_method="int8-dynamic", data=relabeled, registry=reg)
        assert reg.runs("g", 1, phase="optimize") == []  # refused before any work


def test_the_default_holdout_needs_the_training_file(tmp_path: Path) -> None:
    data = _csv(tmp_path / "d.csv", n=600)
    with _registry(tmp_path / "home") as reg:
        train(data, target="y", name="m", model="mlp", params={"max_epochs": 2}, registry=reg)
        _csv(data, n=600, seed=1)  # the file changed since
        with pytest.raises(DataError, match="changed since m:1 was trained .*--data FILE"):
            optimize("m:1", quantize_method="int8-dynamic", registry=reg)
        data.unlink()
        with pytest.raises(DataError, match="is not here: pass labeled rows with --data FILE"):
            optimize("m:1", quantize_method="int8-dynamic", registry=reg)


@pytest.mark.slow
def test_the_command_prints_the_table_and_exits_by_the_verdict(trained: tuple[Path, Path]) -> None:
    home, _ = trained
    run = subprocess.run([*TANDEM, "optimize", "m:1", "--quantize", "int8-dynamic", "--json"],
                         env=cli_env(home), capture_output=True, text=True, timeout=300)  # fmt: skip
    got = json.loads(run.stdout)
    assert run.returncode == (0 if got["accepted"] else 1), run.stderr
    assert (got["registered"] is not None) == got["accepted"]
    table = subprocess.run([*TANDEM, "optimize", "m:1", "--quantize", "int8-static"],
                           env=cli_env(home), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "p50 latency, batch 1" in table.stdout and "throughput, batch 256" in table.stdout
    assert ("accepted" in table.stdout) == (table.returncode == 0)
    bad = subprocess.run([*TANDEM, "optimize", "g:1", "--quantize", "int8-dynamic"],
                         env=cli_env(home), capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "no matrix product" in bad.stderr
    assert "Traceback" not in bad.stderr
