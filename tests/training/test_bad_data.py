"""Data that is wrong in less obvious ways: each gets a clear DataError or is handled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import tandem
from tandem import Registry
from tandem.errors import ConfigError, DataError
from tests.helpers import mixed_table


def test_infinite_feature_values_train_as_missing_and_predict_as_missing(
    registry: Registry,
) -> None:
    table = mixed_table(300)
    x1 = np.asarray(table.column("x1").to_numpy()).copy()
    x1[:10] = np.inf
    x1[10:20] = -np.inf
    result = tandem.train(
        table.set_column(0, "x1", pa.array(x1)),
        target="target",
        name="inf",
        model="gbdt",
        registry=registry,
    )
    manifest = tandem.load("inf", registry=registry).manifest
    assert (
        manifest.details["reference"]["x1"]["missing_rate"] > 0
    )  # the infinities were missing values
    predictor = tandem.load("inf", registry=registry)
    row = {c: v for c, v in mixed_table(1, seed=9).to_pylist()[0].items() if c != "target"}
    for value in (np.inf, -np.inf, 1e300):
        out = predictor.predict({**row, "x1": value})
        assert 0 <= out["proba_yes"] <= 1 and out["proba_yes"] == out["proba_yes"]  # not NaN
    assert predictor.predict({**row, "x1": np.inf}) == predictor.predict({**row, "x1": None})
    assert result.parity_max_abs <= 1e-5


def test_huge_values_do_not_turn_an_mlp_into_nan(registry: Registry) -> None:
    tandem.train(mixed_table(300), target="target", name="mlp", model="mlp", registry=registry)
    predictor = tandem.load("mlp", registry=registry)
    row = {c: v for c, v in mixed_table(1, seed=9).to_pylist()[0].items() if c != "target"}
    out = predictor.predict({**row, "x1": 1e300})
    assert not np.isnan(out["proba_yes"])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda n: np.where(np.arange(n) < 5, np.inf, np.arange(n) * 0.5), "5 infinite values"),
        (lambda n: np.full(n, 3.7), "single value 3.7"),
    ],
)
def test_regression_targets_that_cannot_be_learned(registry: Registry, target, message) -> None:  # type: ignore[no-untyped-def]
    table = mixed_table(200)
    table = table.set_column(5, "target", pa.array(target(200)))
    with pytest.raises(DataError, match=message):
        tandem.train(table, target="target", name="r", task="regression", registry=registry)


def test_too_many_classes_for_the_rows_is_a_data_error(registry: Registry) -> None:
    table = mixed_table(200)
    continuous = pa.array(np.random.default_rng(0).normal(size=200))
    with pytest.raises(DataError, match="too few rows per class.*--task regression"):
        tandem.train(
            table.set_column(5, "target", continuous),
            target="target",
            name="c",
            task="classification",
            registry=registry,
        )


def test_duplicate_column_names_are_named(registry: Registry, tmp_path: Path) -> None:
    csv = tmp_path / "dup.csv"
    csv.write_text("a,a,b,y\n" + "\n".join(f"{i},{i},{i % 3},{i % 2}" for i in range(50)))
    with pytest.raises(DataError, match=r"more than one column named \['a'\]"):
        tandem.train(csv, target="y", name="d", registry=registry)
    frame = pd.DataFrame(np.ones((50, 3)), columns=["a", "a", "y"])
    with pytest.raises(DataError, match=r"more than one column named \['a'\]"):
        tandem.train(frame, target="y", name="d", registry=registry)
    assert registry.list_models() == []


def test_a_class_with_one_row_keeps_every_family_in_auto(registry: Registry) -> None:
    table = mixed_table(300, classes=3)
    labels = table.column("target").to_pylist()
    labels[0] = "rare"
    result = tandem.train(
        table.set_column(5, "target", pa.array(labels)),
        target="target",
        name="rare",
        registry=registry,
        time_budget=60,
    )
    assert all(c.error is None for c in result.leaderboard), [c.error for c in result.leaderboard]


def test_negative_seed_is_a_config_error(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="seed"):
        tandem.train(mixed_table(100), target="target", name="s", seed=-1, registry=registry)


def test_integer_column_names_from_a_dataframe_work_at_prediction(registry: Registry) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 2)))
    frame["y"] = (frame[0] > 0).astype(int)
    tandem.train(frame, target="y", name="ints", model="linear", registry=registry)
    predictor = tandem.load("ints", registry=registry)
    assert predictor.input_names == ["0", "1"]
    assert len(predictor.predict(frame.drop(columns="y"))) == 200
