"""Linear family: logistic regression for classes, ridge regression for values (scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge

from tandem.bundle.graph import GraphBuilder
from tandem.errors import TrainingError
from tandem.models.base import Family, FitContext, probabilities_head

__all__ = ["Linear"]


class Linear(Family):
    """L2-regularised linear model; the strength is chosen on the validation split."""

    name = "linear"
    #: inverse regularisation strengths tried (C for logistic, 1/alpha for ridge)
    grid = (0.01, 0.1, 1.0, 10.0)

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, ctx: FitContext
    ) -> Linear:
        best: tuple[float, Any] | None = None
        for i, c in enumerate(self.grid):
            model: Any = (
                LogisticRegression(C=c, max_iter=2000)
                if ctx.task == "classification"
                else Ridge(alpha=1.0 / c)
            )
            model.fit(X, y)
            if ctx.task == "classification":
                p = np.clip(_all_classes(model, X_val, ctx.n_classes), 1e-15, 1.0)
                loss = float(-np.mean(np.log(p[np.arange(len(y_val)), y_val])))
            else:
                loss = float(np.mean((model.predict(X_val) - y_val) ** 2))
            ctx.epoch_done(i + 1, val_loss=loss)
            if best is None or loss < best[0]:
                best = (loss, model)
            if ctx.time_left <= 0:
                break
        assert best is not None
        self.model_ = best[1]
        self.task_ = ctx.task
        self.n_classes_ = ctx.n_classes
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.task_ == "classification":
            return _all_classes(self.model_, X, self.n_classes_)
        return np.asarray(self.model_.predict(X), dtype=np.float64)

    def to_onnx(self, g: GraphBuilder, features: str) -> str:
        if self.task_ == "classification" and len(self.model_.classes_) != self.n_classes_:
            raise TrainingError(
                f"the linear model saw {len(self.model_.classes_)} of {self.n_classes_} classes in training and cannot be exported"
            )
        coef = np.atleast_2d(np.asarray(self.model_.coef_, dtype=np.float64))
        scores = g.node(
            "Add",
            [
                g.node("MatMul", [features, g.const(coef.T, "coef")]),
                g.const(np.atleast_1d(self.model_.intercept_).astype(np.float64), "intercept"),
            ],
        )
        if self.task_ == "regression":
            return scores
        return probabilities_head(g, scores, binary_logit=coef.shape[0] == 1)

    def describe(self) -> dict[str, Any]:
        reg = "C" if self.task_ == "classification" else "alpha"
        return {"estimator": type(self.model_).__name__, reg: getattr(self.model_, reg)}


def _all_classes(model: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities of shape (n, n_classes), even where the fit saw only some classes (a
    cross-validation fold can miss a rare one): absent classes get probability 0."""
    seen = np.asarray(model.predict_proba(X), dtype=np.float64)
    if seen.shape[1] == n_classes:
        return seen
    out = np.zeros((len(X), n_classes))
    out[:, model.classes_] = seen
    return out
