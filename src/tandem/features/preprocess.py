"""Fitted preprocessing: impute, scale, one-hot encode with an unknown bucket.

Why our own and not a scikit-learn ColumnTransformer exported by skl2onnx: the Bundle graph
takes one typed input per column (double or string, as the serving protocols send them),
keeps every number in double from input to model (the float32 cast of converters is the
parity trap DESIGN.md records), and the numpy transform below mirrors the ONNX nodes one for
one, so training-side and Bundle features are the same numbers. It is a few dozen lines.

Numbers: missing → training median, then ``(x - mean) / std``; a column that had missing values
in training also gets a 0/1 "was missing" feature. Categories: one column per training category
(the most frequent :data:`MAX_CATEGORIES`), plus an unknown bucket for anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tandem.bundle.graph import GraphBuilder
from tandem.bundle.manifest import CATEGORICAL_INPUT, NUMERIC_INPUT, graph_feed, split_kinds
from tandem.data.schema import ColumnSpec, coerce_column

__all__ = ["MAX_CATEGORIES", "Preprocessor", "feed_of"]

MAX_CATEGORIES = 50


@dataclass
class Preprocessor:
    """Turns coerced columns into one float64 feature matrix.

    Example:
        >>> import numpy as np
        >>> pre = Preprocessor([ColumnSpec(name="x", kind="numeric")])
        >>> pre.fit({"x": np.array([1.0, np.nan, 3.0])}).transform({"x": np.array([np.nan])})
        array([[0., 1.]])
    """

    columns: list[ColumnSpec]
    # learned state, set by fit
    medians_: np.ndarray = field(init=False, repr=False)
    means_: np.ndarray = field(init=False, repr=False)
    scales_: np.ndarray = field(init=False, repr=False)
    indicators_: np.ndarray = field(init=False, repr=False)

    @property
    def numeric(self) -> list[ColumnSpec]:
        return split_kinds(self.columns)[0]

    @property
    def categorical(self) -> list[ColumnSpec]:
        return split_kinds(self.columns)[1]

    def fit(self, columns: Mapping[str, np.ndarray]) -> Preprocessor:
        """Learn medians, scales and categories from the training split's coerced columns."""
        if self.numeric:
            x = self._stack(columns)
            missing = np.isnan(x)
            self.medians_ = np.nan_to_num(_nanmedian(x), nan=0.0)
            filled = np.where(missing, self.medians_, x)
            self.means_ = filled.mean(axis=0)
            std = filled.std(axis=0)
            self.scales_ = np.where(std > 0, std, 1.0)
            self.indicators_ = np.flatnonzero(missing.any(axis=0))
        self.columns = [
            self._fit_categories(c, columns[c.name]) if c.kind == "categorical" else c
            for c in self.columns
        ]
        return self

    @staticmethod
    def _fit_categories(spec: ColumnSpec, values: np.ndarray) -> ColumnSpec:
        cats, counts = np.unique(values.astype(str), return_counts=True)
        order = sorted(range(len(cats)), key=lambda i: (-counts[i], cats[i]))[:MAX_CATEGORIES]
        return replace(spec, categories=tuple(str(cats[i]) for i in order))

    def _stack(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.stack(
            [np.asarray(columns[c.name], dtype=np.float64).reshape(-1) for c in self.numeric],
            axis=1,
        )

    @property
    def feature_names(self) -> list[str]:
        names = [c.name for c in self.numeric]
        if self.numeric:
            names += [f"{self.numeric[i].name}__missing" for i in self.indicators_]
        for c in self.categorical:
            names += [f"{c.name}={v}" for v in c.categories] + [f"{c.name}=__unknown__"]
        return names

    def features(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Raw columns (any container of values) coerced as the Predictor does, then
        transformed: the model's input, in memory."""
        return self.transform({c.name: coerce_column(c, columns[c.name]) for c in self.columns})

    def transform(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Features of shape (n_rows, n_features), float64, in :attr:`feature_names` order."""
        parts = []
        if self.numeric:
            x = self._stack(columns)
            missing = np.isnan(x)
            parts.append((np.where(missing, self.medians_, x) - self.means_) / self.scales_)
            parts.append(missing[:, self.indicators_].astype(np.float64))
        for c in self.categorical:
            index = {v: i for i, v in enumerate(c.categories)}
            codes = np.fromiter((index.get(v, len(index)) for v in columns[c.name]), dtype=np.int64)
            parts.append((codes[:, None] == np.arange(len(index) + 1)[None, :]).astype(np.float64))
        return np.concatenate(parts, axis=1)

    def to_onnx(self, g: GraphBuilder) -> str:
        """Emit the graph inputs (see :func:`tandem.bundle.manifest.graph_feed`) and the nodes of
        :meth:`transform`; returns the name of the (N, n_features) double tensor."""
        parts = []
        if self.numeric:
            x = g.node(
                "Transpose",
                [g.input(NUMERIC_INPUT, "double", [len(self.numeric), None])],
                perm=[1, 0],
            )
            missing = g.node("IsNaN", [x])
            filled = g.node("Where", [missing, g.const(self.medians_, "median"), x])
            centred = g.node("Sub", [filled, g.const(self.means_, "mean")])
            parts.append(g.node("Div", [centred, g.const(self.scales_, "scale")]))
            if self.indicators_.size:
                as_num = g.node("Cast", [missing], to=11)  # 11 = double
                parts.append(
                    g.node("Gather", [as_num, g.const(self.indicators_.astype(np.int64))], axis=1)
                )
        if self.categorical:
            strings = g.input(CATEGORICAL_INPUT, "string", [len(self.categorical), None])
            # transpose first: ONNX Runtime 1.31's Gather along axis 0 of a string tensor
            # returns wrong values (measured), along axis 1 it is right
            by_row = g.node("Transpose", [strings], perm=[1, 0])
        for j, c in enumerate(self.categorical):
            column = g.node("Gather", [by_row, g.const(np.array([j], dtype=np.int64))], axis=1)
            codes = g.node(
                "LabelEncoder",
                [column],
                domain="ai.onnx.ml",
                keys_strings=list(c.categories),
                values_int64s=list(range(len(c.categories))),
                default_int64=len(c.categories),
            )
            onehot = g.node(
                "Equal", [codes, g.const(np.arange(len(c.categories) + 1, dtype=np.int64)[None, :])]
            )
            parts.append(g.node("Cast", [onehot], to=11))
        return parts[0] if len(parts) == 1 else g.node("Concat", parts, axis=1, hint="features")

    def state(self) -> dict[str, Any]:
        """The fitted state as plain JSON (stored in the manifest for reading, not for loading)."""
        out: dict[str, Any] = {"features": self.feature_names}
        if self.numeric:
            out["numeric"] = {
                c.name: {"median": float(m), "mean": float(mu), "scale": float(s)}
                for c, m, mu, s in zip(
                    self.numeric, self.medians_, self.means_, self.scales_, strict=True
                )
            }
        return out


def feed_of(pre: Preprocessor, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph feed of coerced columns (the inputs :meth:`Preprocessor.to_onnx` declares)."""
    numeric, categorical = split_kinds(pre.columns)
    return graph_feed([columns[c.name] for c in numeric], [columns[c.name] for c in categorical])


def _nanmedian(x: np.ndarray) -> np.ndarray:
    # np.nanmedian warns on all-NaN columns; those get 0 from the caller
    out = np.full(x.shape[1], np.nan)
    for j in range(x.shape[1]):
        col = x[:, j]
        col = col[~np.isnan(col)]
        if col.size:
            out[j] = np.median(col)
    return out
