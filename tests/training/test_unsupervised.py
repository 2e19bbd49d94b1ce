"""Unsupervised kinds: k-means, PCA and the autoencoder train without a target, freeze into a
Bundle, register, predict, serve, batch-score and are monitored on their outputs."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sklearn import decomposition

import tandem
from tandem import ConfigError, DataError, Registry, UsageError
from tandem.batch import BatchOptions, run_batch
from tandem.monitoring.monitor import check
from tests.helpers import TANDEM, cli_env
from tests.serving.conftest import running_server

CENTRES = np.array([[0.0, 0.0, 0.0, 0.0], [6.0, 6.0, 0.0, 0.0], [0.0, 6.0, 6.0, 6.0]])


def blobs(n: int = 1500, seed: int = 0, shift: float = 0.0) -> pa.Table:
    """Three well separated groups in four numeric columns, and a categorical column that
    follows the group (so preprocessing's one-hot part is in the graph too)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    X = CENTRES[group] + rng.normal(size=(n, 4)) + shift
    return pa.table(
        {**{f"x{i}": X[:, i] for i in range(4)},
         "shop": pa.array(np.array(["north", "south", "east"])[group])}
    )  # fmt: skip


def test_kmeans_finds_the_groups_and_every_front_end_agrees(registry: Registry, home: Path) -> None:
    data = blobs()
    result = tandem.train(data, target=None, name="seg", registry=registry)
    assert (result.task, result.family) == ("clustering", "kmeans")
    model = result.version
    manifest = tandem.load("seg", registry=registry).manifest
    assert manifest.width == 3, manifest.details["model"]["silhouette_by_k"]  # k chosen
    assert result.leaderboard[0].test["silhouette"] > 0.5

    rows = data.slice(0, 300)
    predicted = tandem.load("seg", registry=registry).predict(rows).to_pandas()
    assert list(predicted.columns) == ["cluster", "distance_0", "distance_1", "distance_2"]
    # one cluster per true group: the clustering recovers the groups (up to naming)
    truth = np.asarray(rows.column("shop").to_pylist())
    pairs = set(zip(truth.tolist(), predicted["cluster"].tolist(), strict=True))
    assert len(pairs) == 3 and len({cluster for _, cluster in pairs}) == 3
    live = result.pipeline.predict({c: rows.column(c).to_numpy() for c in rows.column_names})
    np.testing.assert_allclose(
        predicted[["distance_0", "distance_1", "distance_2"]], live, atol=1e-9
    )
    assert (predicted["cluster"].to_numpy() == live.argmin(axis=1)).all()

    # batch scoring writes the same columns
    source = home.parent / "rows.parquet"
    pq.write_table(rows, source)
    out = home.parent / "scored.parquet"
    run_batch(model.ref, BatchOptions([source], out), registry=registry)
    scored = pq.read_table(out).to_pandas()
    assert (scored["cluster"].to_numpy() == predicted["cluster"].to_numpy()).all()

    # and so does the server
    body = json.dumps({"dataframe_records": rows.slice(0, 5).to_pylist()}).encode()
    with running_server(["seg"], home) as server:
        request = urllib.request.Request(
            f"{server.url}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            served = json.loads(response.read())["predictions"]
    assert [r["cluster"] for r in served] == predicted["cluster"].tolist()[:5]


def test_pca_projects_like_scikit_learn_and_keeps_the_asked_variance(registry: Registry) -> None:
    data = blobs(seed=1).drop(["shop"])
    result = tandem.train(data, target=None, name="proj", model="pca",
                          params={"variance": 0.8}, registry=registry)  # fmt: skip
    manifest = tandem.load("proj", registry=registry).manifest
    assert manifest.task == "projection"
    explained = manifest.details["model"]["explained_variance_ratio"]
    assert sum(explained) >= 0.8 and sum(explained[:-1]) < 0.8  # the fewest axes that reach it
    projected = tandem.load("proj", registry=registry).predict(data)
    assert list(projected.column_names) == [f"component_{i + 1}" for i in range(len(explained))]
    # the axes are the principal axes of the standardised training rows (signs may flip)
    X = result.pipeline.preprocessor.transform(
        {c: data.column(c).to_numpy() for c in data.column_names}
    )
    train_rows = X[result.split.train]
    ours = np.column_stack([projected.column(n).to_numpy() for n in projected.column_names])
    theirs = decomposition.PCA(len(explained)).fit(train_rows).transform(X)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-6)


def test_the_autoencoder_flags_outliers_and_about_its_contamination_of_normal_rows(
    registry: Registry,
) -> None:
    rng = np.random.default_rng(3)
    # rows on a 2-D plane in 6-D: a bottleneck of 2 reconstructs them, off-plane rows not
    basis = rng.normal(size=(2, 6))
    normal = rng.normal(size=(6000, 2)) @ basis + rng.normal(scale=0.05, size=(6000, 6))
    table = pa.table({f"s{i}": normal[:, i] for i in range(6)})
    tandem.train(table, target=None, name="ae", model="autoencoder", registry=registry,
                 params={"bottleneck": 2, "contamination": 0.02, "max_epochs": 60})  # fmt: skip
    predictor = tandem.load("ae", registry=registry)
    assert predictor.manifest.threshold is not None and predictor.manifest.threshold > 0
    fresh = rng.normal(size=(4000, 2)) @ basis + rng.normal(scale=0.05, size=(4000, 6))
    flagged = predictor.predict({f"s{i}": fresh[:, i] for i in range(6)})["anomaly"]
    assert 0.005 < flagged.mean() < 0.06  # ~2 % of new normal rows
    odd = fresh[:200] + rng.normal(scale=3.0, size=(200, 6))
    assert predictor.predict({f"s{i}": odd[:, i] for i in range(6)})["anomaly"].mean() > 0.95


def test_monitor_compares_the_outputs_of_an_unsupervised_model(
    registry: Registry, tmp_path: Path
) -> None:
    tandem.train(blobs(), target=None, name="seg", registry=registry, params={"clusters": 3},
                 model="kmeans")  # fmt: skip
    same, moved = tmp_path / "same.parquet", tmp_path / "moved.parquet"
    pq.write_table(blobs(1500, seed=5), same)
    # the same groups, but most rows now come from one of them
    skewed = blobs(6000, seed=6)
    keep = np.flatnonzero(np.asarray(skewed.column("shop").to_pylist()) == "north")[:1200]
    pq.write_table(pa.concat_tables([skewed.take(keep), blobs(300, seed=7)]), moved)

    quiet = check(registry, "seg", current=same)
    assert not quiet.result.drifted, quiet.result.drifted_columns
    loud = check(registry, "seg", current=moved)
    drifted = set(loud.result.drifted_columns)
    assert "__cluster" in drifted and "shop" in drifted, drifted


def test_unsupervised_choices_are_checked_before_any_work(registry: Registry) -> None:
    data = blobs(300)
    with pytest.raises(ConfigError, match="learns without a target"):
        tandem.train(data, target="x0", name="m", model="kmeans", registry=registry)
    with pytest.raises(ConfigError, match="needs a target"):
        tandem.train(data, target=None, name="m", task="regression", registry=registry)
    with pytest.raises(ConfigError, match="pca does not do clustering"):
        tandem.train(data, target=None, name="m", task="clustering", model="pca", registry=registry)
    with pytest.raises(ConfigError, match="clusters must be >= 2"):
        tandem.train(data, target=None, name="m", params={"clusters": 1}, registry=registry)
    with pytest.raises(ConfigError, match="no setting"):
        tandem.train(data, target=None, name="m", params={"hidden": 3}, registry=registry)
    with pytest.raises(ConfigError, match="contamination"):
        tandem.train(data, target=None, name="m", model="autoencoder",
                     params={"contamination": 0.7}, registry=registry)  # fmt: skip
    assert registry.list_models() == []  # nothing registered by a refused run


def test_label_workflows_refuse_an_unsupervised_model_clearly(
    registry: Registry, tmp_path: Path
) -> None:
    from tandem.monitoring.feedback import add_labels
    from tandem.optimize import optimize

    tandem.train(blobs(300), target=None, name="seg", registry=registry, params={"clusters": 3})
    labels = tmp_path / "labels.csv"
    pacsv.write_csv(pa.table({"request_id": ["a"], "label": [1]}), labels)
    with pytest.raises(DataError, match="no ground truth"):
        add_labels(registry, "seg", labels)
    with pytest.raises(UsageError, match="clustering model"):
        optimize("seg", quantize_method="int8-dynamic", registry=registry)


def test_the_cli_trains_without_a_target(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    pacsv.write_csv(blobs(600), data)
    done = subprocess.run(
        [*TANDEM, "train", str(data), "--name", "seg", "--model", "pca", "--json"],
        env=cli_env(home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["task"], report["family"]) == ("projection", "pca")
    refused = subprocess.run(
        [*TANDEM, "train", str(data), "--name", "seg", "--task", "regression"],
        env=cli_env(home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "needs a target" in refused.stderr
    assert "Traceback" not in refused.stderr
