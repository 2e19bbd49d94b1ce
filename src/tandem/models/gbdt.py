"""Gradient-boosted trees (LightGBM), exported as one ai.onnx.ml TreeEnsemble in double.

Why not onnxmltools: its LightGBM converter accepts float32 inputs only, and float32 split
thresholds send rows near a threshold down the other branch (DESIGN.md measured probabilities
off by 0.013). TreeEnsemble (ai.onnx.ml opset 5) keeps inputs, thresholds and leaf sums in
double, so the Bundle matches native LightGBM to rounding. The translation from LightGBM's
``dump_model()`` JSON is short and tested for parity.
"""

from __future__ import annotations

import time
from typing import Any

import lightgbm as lgb
import numpy as np

from tandem.bundle.graph import GraphBuilder
from tandem.errors import TrainingError
from tandem.models.base import Family, FitContext, probabilities_head

__all__ = ["GBDT"]

_BRANCH_LEQ = 0


class GBDT(Family):
    """LightGBM with early stopping on the validation split."""

    name = "gbdt"

    def __init__(
        self,
        *,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_rounds: int = 2000,
        patience: int = 50,
    ) -> None:
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_rounds = max_rounds
        self.patience = patience

    def _params(self, ctx: FitContext, n_rows: int) -> dict[str, Any]:
        objective: dict[str, Any]
        if ctx.task == "regression":
            objective = {"objective": "regression"}
        elif ctx.n_classes == 2:
            objective = {"objective": "binary"}
        else:
            objective = {"objective": "multiclass", "num_class": ctx.n_classes}
        return {
            **objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": max(2, min(20, n_rows // 50)),
            "feature_fraction": 0.9,
            "bagging_fraction": 0.9,
            "bagging_freq": 1,
            "seed": ctx.seed,
            "deterministic": True,
            "num_threads": 0,
            "verbose": -1,
        }

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, ctx: FitContext
    ) -> GBDT:
        def stop_at_deadline(env: Any) -> None:
            # (data, metric, value, higher is better) of the validation set
            ctx.epoch_done(env.iteration + 1, val_loss=float(env.evaluation_result_list[0][2]))
            if time.monotonic() > ctx.deadline and env.iteration > 0:
                raise lgb.callback.EarlyStopException(env.iteration, env.evaluation_result_list)

        train = lgb.Dataset(X, y, free_raw_data=False)
        val = lgb.Dataset(X_val, y_val, reference=train)
        history: dict[str, dict[str, list[float]]] = {}
        self.booster_ = lgb.train(
            self._params(ctx, len(y)),
            train,
            num_boost_round=self.max_rounds,
            valid_sets=[val],
            callbacks=[
                lgb.early_stopping(self.patience, verbose=False),
                lgb.record_evaluation(history),
                stop_at_deadline,
            ],
        )
        self.task_ = ctx.task
        self.n_classes_ = ctx.n_classes
        # the best validation round, however training stopped: patience, deadline or max rounds
        # (a deadline stop would otherwise keep the last round, overfit or not)
        (losses,) = next(iter(history.values())).values()
        self.best_iteration_ = int(np.argmin(losses)) + 1
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(
            self.booster_.predict(X, num_iteration=self.best_iteration_), dtype=np.float64
        )
        if self.task_ == "classification" and self.n_classes_ == 2:
            return np.stack([1.0 - out, out], axis=1)
        return out

    def to_onnx(self, g: GraphBuilder, features: str) -> str:
        dump = self.booster_.dump_model(num_iteration=self.best_iteration_)
        n_targets = max(1, int(dump["num_tree_per_iteration"]))
        attrs = _tree_ensemble(dump["tree_info"], n_targets)
        scores = g.node(
            "TreeEnsemble",
            [features],
            domain="ai.onnx.ml",
            n_targets=n_targets,
            aggregate_function=1,
            post_transform=0,
            **attrs,
        )
        if self.task_ == "regression":
            return scores
        return probabilities_head(g, scores, binary_logit=n_targets == 1)

    def describe(self) -> dict[str, Any]:
        return {
            "trees": self.booster_.num_trees(),
            "best_iteration": self.best_iteration_,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
        }


def _tree_ensemble(trees: list[dict[str, Any]], n_targets: int) -> dict[str, Any]:
    """LightGBM trees as TreeEnsemble attributes (split nodes and leaves numbered separately)."""
    from onnx import numpy_helper

    roots: list[int] = []
    # one entry per split node: feature, threshold, (true id, true is leaf), (false id, false is
    # leaf), whether a missing value takes the true branch
    nodes: list[tuple[int, float, int, int, int, int, int]] = []
    leaves: list[tuple[int, float]] = []  # (target, weight)

    def leaf(node: dict[str, Any], target: int) -> tuple[int, int]:
        leaves.append((target, float(node["leaf_value"])))
        return len(leaves) - 1, 1

    def child(node: dict[str, Any], target: int) -> tuple[int, int]:
        return leaf(node, target) if "leaf_value" in node else (visit(node, target), 0)

    def visit(node: dict[str, Any], target: int) -> int:
        if node["decision_type"] != "<=" or node["missing_type"] == "Zero":
            raise TrainingError(
                f"unsupported LightGBM split {node['decision_type']}/{node['missing_type']}"
            )
        i = len(nodes)
        nodes.append((0, 0.0, 0, 0, 0, 0, 0))  # reserve the slot; children come after it
        left, right = child(node["left_child"], target), child(node["right_child"], target)
        missing_true = int(node["missing_type"] == "NaN" and node["default_left"])
        nodes[i] = (
            int(node["split_feature"]),
            float(node["threshold"]),
            *left,
            *right,
            missing_true,
        )
        return i

    for index, tree in enumerate(trees):
        target = index % n_targets
        top = tree["tree_structure"]
        roots.append(len(nodes))
        if "leaf_value" in top:
            # a tree without splits: a dummy split whose both branches reach its one leaf
            only, _ = leaf(top, target)
            nodes.append((0, 0.0, only, 1, only, 1, 0))
        else:
            visit(top, target)
    feature, split, true_id, true_leaf, false_id, false_leaf, missing = (
        list(c) for c in zip(*nodes, strict=True)
    )
    return {
        "tree_roots": roots,
        "nodes_featureids": feature,
        "nodes_modes": numpy_helper.from_array(np.full(len(nodes), _BRANCH_LEQ, dtype=np.uint8)),
        "nodes_splits": numpy_helper.from_array(np.asarray(split, dtype=np.float64)),
        "nodes_truenodeids": true_id,
        "nodes_trueleafs": true_leaf,
        "nodes_falsenodeids": false_id,
        "nodes_falseleafs": false_leaf,
        "nodes_missing_value_tracks_true": missing,
        "leaf_targetids": [t for t, _ in leaves],
        "leaf_weights": numpy_helper.from_array(
            np.asarray([w for _, w in leaves], dtype=np.float64)
        ),
    }
