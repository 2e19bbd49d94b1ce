"""Conformance: every family honours the Family contract, and its ONNX export computes what
its in-memory ``predict`` computes (the Bundle parity promise, per family and task)."""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime as ort
import pytest

from tandem.bundle.graph import GraphBuilder
from tandem.models import FAMILIES, GBDT, FitContext


def _data(task: str, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 5))
    signal = X[:, 0] - 2 * X[:, 1] + X[:, 2] * X[:, 3]
    if task == "regression":
        return X, signal + rng.normal(scale=0.1, size=400)
    return X, np.searchsorted(np.quantile(signal, np.linspace(0, 1, n_classes + 1)[1:-1]), signal)


def _run_graph(family: object, X: np.ndarray, width: int) -> np.ndarray:
    g = GraphBuilder("t")
    out = family.to_onnx(g, g.input("features", "double", [None, X.shape[1]]))  # type: ignore[attr-defined]
    g.output(out, "out", "double", [None, width])
    session = ort.InferenceSession(
        g.build().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(None, {"features": X})[0])


CASES = [("classification", 2), ("classification", 3), ("regression", 1)]


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize(("task", "n_classes"), CASES)
def test_family_contract_and_onnx_parity(name: str, task: str, n_classes: int) -> None:
    X, y = _data(task, n_classes)
    kwargs = {"max_epochs": 30} if name == "mlp" else {}
    family = FAMILIES[name](**kwargs)  # type: ignore[call-arg]
    assert not [a for a in vars(family) if a.endswith("_")], "nothing is learned in __init__"
    ctx = FitContext(task=task, n_classes=n_classes, seed=0, deadline=time.monotonic() + 60)  # type: ignore[arg-type]
    assert family.fit(X[:300], y[:300], X[300:], y[300:], ctx) is family
    predicted = family.predict(X)
    if task == "classification":
        assert predicted.shape == (400, n_classes)
        np.testing.assert_allclose(predicted.sum(axis=1), 1.0, atol=1e-6)
        assert np.mean(predicted.argmax(axis=1) == y) > 1 / n_classes + 0.15  # it learned something
    else:
        assert predicted.shape == (400,)
        assert np.corrcoef(predicted, y)[0, 1] > 0.5
    frozen = _run_graph(family, X, n_classes)
    np.testing.assert_allclose(frozen.reshape(predicted.shape), predicted, rtol=0, atol=1e-5)
    json.dumps(family.describe())


def test_gbdt_keeps_split_thresholds_in_double() -> None:
    """Rows at and one ulp beside every split threshold take LightGBM's own branch."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 3)) * 1e-3 + 0.1  # values crowd around thresholds in float32 terms
    y = (X[:, 0] + X[:, 1] > 0.2).astype(int)
    ctx = FitContext(task="classification", n_classes=2, seed=0, deadline=time.monotonic() + 60)
    model = GBDT(max_rounds=50).fit(X[:1500], y[:1500], X[1500:], y[1500:], ctx)
    thresholds = [
        n["threshold"]
        for t in model.booster_.dump_model()["tree_info"]
        for n in _walk(t["tree_structure"])
        if "threshold" in n
    ]
    assert thresholds
    probes = np.array(
        [
            [t + d, t + d, t + d]
            for t in thresholds[:200]
            for d in (0.0, np.spacing(t), -np.spacing(t))
        ]
    )
    np.testing.assert_allclose(
        _run_graph(model, probes, 2), model.predict(probes), rtol=0, atol=1e-9
    )


def _walk(node: dict) -> list[dict]:  # type: ignore[type-arg]
    if "leaf_value" in node:
        return []
    return [node, *_walk(node["left_child"]), *_walk(node["right_child"])]


def test_gbdt_stopped_by_the_deadline_keeps_its_best_round() -> None:
    X, y = _data("classification", 2)
    noisy = np.random.default_rng(5).permutation(
        y
    )  # labels unrelated to X: validation loss rises early
    # patience larger than the rounds a deadline allows: only the deadline can stop training
    ctx = FitContext(task="classification", n_classes=2, seed=0, deadline=time.monotonic() + 1.0)
    model = GBDT(patience=100_000, max_rounds=100_000, learning_rate=0.3).fit(
        X[:300], noisy[:300], X[300:], noisy[300:], ctx
    )
    assert model.booster_.current_iteration() > 50
    assert model.best_iteration_ < model.booster_.current_iteration() / 2
