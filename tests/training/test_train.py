from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tandem
from tandem import Registry, Settings
from tandem.errors import ConfigError, DataError, UsageError
from tandem.models import auto
from tandem.models.auto import Candidate, rank_key
from tandem.training.train import PARITY_TOLERANCE
from tests.helpers import mixed_table


def _artifacts_empty(home: Path) -> bool:
    root = home / "artifacts"
    return not root.exists() or all(
        p.name in (".staging", ".trash") and not any(p.iterdir()) for p in root.iterdir()
    )


@pytest.mark.slow
@pytest.mark.parametrize("model", ["linear", "gbdt", "mlp"])
@pytest.mark.parametrize(("classes", "regression"), [(2, False), (3, False), (1, True)])
def test_bundle_predictions_match_the_in_memory_pipeline(
    registry: Registry, model: str, classes: int, regression: bool
) -> None:
    table = mixed_table(500, classes=classes, regression=regression)
    result = tandem.train(
        table, target="target", name="m", model=model, registry=registry, time_budget=20
    )  # type: ignore[arg-type]
    assert result.parity_max_abs <= PARITY_TOLERANCE
    test_rows = table.take(result.split.test).drop_columns(["target"])
    live = result.pipeline.predict({c: test_rows.column(c) for c in test_rows.column_names})
    frozen = tandem.load("m", registry=registry).predict(test_rows)
    if regression:
        np.testing.assert_allclose(frozen.column("prediction").to_numpy(), live, rtol=0, atol=1e-5)
        assert result.version.metrics["r2"] > 0.5
    else:
        classes_ = frozen.column_names[1:]
        got = np.stack([frozen.column(c).to_numpy() for c in classes_], axis=1)
        np.testing.assert_allclose(got, live, rtol=0, atol=1e-5)
        assert result.version.metrics["accuracy"] > 1 / classes + 0.15


def test_auto_on_small_data_ranks_families_by_cross_validation(registry: Registry) -> None:
    result = tandem.train(
        mixed_table(400), target="target", name="auto", registry=registry, time_budget=60
    )
    board = {c.family: c for c in result.leaderboard}
    assert set(board) == {"linear", "gbdt", "mlp"}
    chosen = [c for c in result.leaderboard if c.chosen]
    assert len(chosen) == 1 and chosen[0].family == result.family
    assert all(c.cv and 0 <= c.cv["accuracy"] <= 1 for c in result.leaderboard)
    assert chosen[0] == max(result.leaderboard, key=rank_key("classification"))
    manifest = tandem.load("auto", registry=registry).manifest
    assert manifest.family == result.family
    assert [c["family"] for c in manifest.details["leaderboard"]] == ["linear", "gbdt", "mlp"]


def test_auto_on_larger_data_ranks_by_the_validation_split(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auto, "CV_MAX_ROWS", 100)
    result = tandem.train(
        mixed_table(400), target="target", name="auto", registry=registry, time_budget=60
    )
    assert all(c.cv == {} for c in result.leaderboard)
    best = max(
        result.leaderboard, key=lambda c: (c.validation["accuracy"], -c.validation["log_loss"])
    )
    assert best.chosen


def test_manifest_carries_signature_reference_statistics_and_profile(registry: Registry) -> None:
    result = tandem.train(
        mixed_table(300), target="target", name="sig", model="linear", registry=registry
    )
    m = tandem.load("sig:1", registry=registry).manifest
    kinds = {c.name: c.kind for c in m.inputs}
    assert kinds == {
        "x1": "numeric",
        "x2": "numeric",
        "city": "categorical",
        "rooms": "categorical",
        "garden": "boolean",
    }
    city = next(c for c in m.inputs if c.name == "city")
    assert set(city.categories) == {"paris", "lyon", "nice", "lille"}
    assert m.classes == ("no", "yes")
    ref = m.details["reference"]
    n_missing = round(ref["x2"]["missing_rate"] * result.rows["train"])
    assert n_missing > 0 and sum(ref["x2"]["bin_counts"]) + n_missing == result.rows["train"]
    assert sum(ref["x1"]["bin_counts"]) == result.rows["train"]
    assert sum(ref["city"]["frequencies"].values()) == result.rows["train"]
    profile = m.details["training"]["profile"]
    assert profile["wall_seconds"] > 0 and profile["cpu_seconds"] > 0 and profile["peak_rss_mb"] > 0
    assert m.details["data"]["fingerprint"] == result.version.data_fingerprint
    assert m.details["recipe"]["target"] == "target"


def test_same_seed_same_data_same_model(registry: Registry) -> None:
    a = tandem.train(
        mixed_table(300), target="target", name="s", model="gbdt", seed=7, registry=registry
    )
    b = tandem.train(
        mixed_table(300), target="target", name="s", model="gbdt", seed=7, registry=registry
    )
    assert a.version.data_fingerprint == b.version.data_fingerprint
    assert a.version.metrics == b.version.metrics
    assert (a.version.path / "model.onnx").read_bytes() == (
        b.version.path / "model.onnx"
    ).read_bytes()


def test_a_folder_of_parquet_parts_trains_like_one_table(
    registry: Registry, tmp_path: Path
) -> None:
    table = mixed_table(300)
    for i in range(3):
        pq.write_table(table.slice(i * 100, 100), tmp_path / f"part-{i}.parquet")
    from_folder = tandem.train(
        tmp_path, target="target", name="f", model="linear", registry=registry
    )
    from_table = tandem.train(table, target="target", name="f", model="linear", registry=registry)
    assert from_folder.version.data_fingerprint == from_table.version.data_fingerprint
    assert from_folder.version.metrics == from_table.version.metrics


BAD = [
    (lambda t: t, {"target": "nope"}, DataError, "target column 'nope' is not in the data"),
    (
        lambda t: t.set_column(5, "target", pa.array(["yes"] * t.num_rows)),
        {},
        DataError,
        "single class",
    ),
    (
        lambda t: t.set_column(5, "target", pa.nulls(t.num_rows, pa.string())),
        {},
        DataError,
        "no values",
    ),
    (lambda t: t.slice(0, 10), {}, DataError, "at least"),
    (lambda t: t, {"task": "regression"}, DataError, "regression needs numbers"),
    (lambda t: t, {"model": "xgboost"}, ConfigError, "unknown model 'xgboost'"),
    (lambda t: t, {"time_budget": -1}, ConfigError, "positive"),
    (lambda t: t, {"name": "../evil"}, UsageError, "evil"),
]


@pytest.mark.parametrize(("change", "kwargs", "error", "message"), BAD)
def test_bad_input_names_the_problem_and_registers_nothing(
    home: Path, change, kwargs, error, message
) -> None:  # type: ignore[no-untyped-def]
    with Registry(Settings(home=home)) as reg:
        args = {"target": "target", "name": "bad", "registry": reg, **kwargs}
        with pytest.raises(error, match=message):
            tandem.train(change(mixed_table(200)), **args)
        assert reg.list_models() == []
    assert _artifacts_empty(home)


def test_mlp_regression_on_a_large_target_freezes_within_the_scaled_tolerance(
    registry: Registry,
) -> None:
    """float32 cannot hold 1e-5 on values near 1,000; parity is judged in target spreads."""
    table = mixed_table(400, regression=True)
    big = pa.array(np.asarray(table.column("target").to_numpy()) * 300 + 1000)
    result = tandem.train(
        table.set_column(5, "target", big),
        target="target",
        name="big",
        model="mlp",
        registry=registry,
    )
    spread = float(np.std(big.to_numpy()))
    assert spread * PARITY_TOLERANCE > 1e-5 and result.parity_max_abs <= spread * PARITY_TOLERANCE


def test_classification_ties_on_accuracy_go_to_the_lower_log_loss() -> None:

    sure = Candidate("gbdt", {"accuracy": 1.0, "log_loss": 0.01}, {}, 1.0)
    unsure = Candidate("linear", {"accuracy": 1.0, "log_loss": 0.3}, {}, 1.0)
    worse = Candidate("mlp", {"accuracy": 0.9, "log_loss": 0.001}, {}, 1.0)
    assert max([unsure, sure, worse], key=rank_key("classification")) is sure


def test_family_params_reach_the_model_and_the_recipe(registry: Registry) -> None:
    table = mixed_table(300)
    result = tandem.train(
        table, target="target", name="m", model="gbdt", params={"max_rounds": 7, "patience": 7},
        registry=registry,
    )  # fmt: skip
    manifest = tandem.load("m", registry=registry).manifest
    assert manifest.details["recipe"]["params"] == {"max_rounds": 7, "patience": 7}
    assert 1 <= manifest.details["model"]["best_iteration"] <= 7
    assert result.family == "gbdt"


@pytest.mark.parametrize(
    ("model", "params", "match"),
    [
        ("mlp", {"depth": 3}, r"mlp has no setting\(s\) \['depth'\]; it takes \[.*'hidden'"),
        ("auto", {"hidden": 8}, "params apply to one family"),
    ],
)
def test_unknown_family_params_are_refused_before_any_work(
    registry: Registry, model: str, params: dict[str, int], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        tandem.train(
            mixed_table(50), target="target", name="m", model=model, params=params,  # type: ignore[arg-type]
            registry=registry,
        )  # fmt: skip
    assert registry.list_models() == []
