"""Linear family: logistic regression for classes, ridge regression for values (scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge

from tandem.bundle.graph import GraphBuilder
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
        for c in self.grid:
            model: Any = (
                LogisticRegression(C=c, max_iter=2000)
                if ctx.task == "classification"
                else Ridge(alpha=1.0 / c)
            )
            model.fit(X, y)
            if ctx.task == "classification":
                p = np.clip(model.predict_proba(X_val), 1e-15, 1.0)
                loss = float(-np.mean(np.log(p[np.arange(len(y_val)), y_val])))
            else:
                loss = float(np.mean((model.predict(X_val) - y_val) ** 2))
            if best is None or loss < best[0]:
                best = (loss, model)
            if ctx.time_left <= 0:
                break
        assert best is not None
        self.model_ = best[1]
        self.task_ = ctx.task
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.task_ == "classification":
            return np.asarray(self.model_.predict_proba(X), dtype=np.float64)
        return np.asarray(self.model_.predict(X), dtype=np.float64)

    def to_onnx(self, g: GraphBuilder, features: str) -> str:
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
