"""Scores of predictions against truth; the first metric of each task picks the model."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from tandem.data.schema import Task

__all__ = ["PRIMARY", "metric_names", "score"]

#: the metric that ranks candidates (higher is better for both), and the one shown first for
#: the unsupervised tasks (see :mod:`tandem.models.unsupervised`)
PRIMARY: dict[Task, str] = {
    "classification": "accuracy",
    "regression": "r2",
    "clustering": "silhouette",
    "projection": "explained_variance",
    "anomaly": "reconstruction_error",
    "ranking": "hit_rate",
}


def metric_names(task: Task, n_classes: int = 0) -> list[str]:
    """The names :func:`score` gives for ``task`` (``roc_auc`` only for two classes)."""
    if task == "regression":
        return ["r2", "rmse", "mae"]
    return ["accuracy", "log_loss", "f1_macro", *(["roc_auc"] if n_classes == 2 else [])]


def score(task: Task, y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Metrics of one split.

    Args:
        task: the task.
        y: class codes (n,) or values (n,).
        predicted: probabilities (n, n_classes) or values (n,).
    """
    if task == "regression":
        err = predicted - y
        return {
            "r2": float(skm.r2_score(y, predicted)),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "mae": float(np.mean(np.abs(err))),
        }
    n_classes = predicted.shape[1]
    # float32 networks sum to 1 only within rounding; log_loss warns about that
    predicted = predicted / predicted.sum(axis=1, keepdims=True)
    labels = predicted.argmax(axis=1)
    out = {
        "accuracy": float(np.mean(labels == y)),
        "log_loss": float(
            skm.log_loss(y, np.clip(predicted, 1e-15, 1.0), labels=list(range(n_classes)))
        ),
        "f1_macro": float(
            skm.f1_score(y, labels, average="macro", labels=list(range(n_classes)), zero_division=0)
        ),
    }
    if n_classes == 2 and len(np.unique(y)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y, predicted[:, 1]))
    return out
