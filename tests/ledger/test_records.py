"""Training records: one per run, registered with the version, with per-epoch figures."""

from __future__ import annotations

from pathlib import Path

import pytest

import tandem
from tandem import Registry, Settings
from tandem.errors import DataError
from tandem.ledger.records import profile_of
from tests.helpers import numeric_table


def test_a_training_run_records_every_fit_epoch_by_epoch(tmp_path: Path) -> None:
    with Registry(Settings(home=tmp_path)) as reg:
        result = tandem.train(numeric_table(), target="y", name="m", time_budget=20, registry=reg)
        (run,) = reg.runs("m", 1, phase="train")
    assert run.rows == 800 and run.details["family"] == result.family
    assert profile_of(run).cpu_seconds == pytest.approx(result.profile.cpu_seconds)
    fits = run.details["epochs"]
    # every family's final fit, and its cross-validation folds (800 rows: ranked by CV)
    assert {(f["family"], f["stage"]) for f in fits} >= {
        (family, stage) for family in ("linear", "gbdt", "mlp") for stage in ("fit", "cv 1/5")
    }
    for fit in fits:
        n = len(fit["epoch"])
        assert n >= 1 and fit["epoch"] == list(range(1, n + 1))
        assert len(fit["wall_s"]) == len(fit["cpu_s"]) == len(fit["val_loss"]) == n
        assert all(w >= 0 for w in fit["wall_s"])
    mlp = next(f for f in fits if f["family"] == "mlp" and f["stage"] == "fit")
    assert len(mlp["train_loss"]) == len(mlp["epoch"])
    # the epochs are inside the run: their time cannot exceed it
    assert sum(sum(f["wall_s"]) for f in fits) <= run.wall_seconds
    assert run.details["hardware"]["cores"] >= 1


def test_a_failed_run_records_nothing(tmp_path: Path) -> None:
    with Registry(Settings(home=tmp_path)) as reg:
        with pytest.raises(DataError):
            tandem.train(numeric_table(), target="nope", name="m", registry=reg)
        assert reg.list_models() == []
