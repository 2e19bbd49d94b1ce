"""What a Bundle's graph gives and how the Predictor's decode step names it, per task.

Every Bundle graph has one float64 output whose meaning depends on the task:

============== ================ =====================================================
task           graph output     decoded columns
============== ================ =====================================================
classification ``probabilities`` ``label``, ``proba_<class>`` per class
regression     ``value`` (n, 1)  ``prediction``
clustering     ``distances``     ``cluster`` (nearest centre), ``distance_<c>`` per centre
projection     ``components``    ``component_1`` … ``component_k``
anomaly        ``score`` (n, 1)  ``anomaly_score``, ``anomaly`` (score above the threshold
                                 set on the training data)
ranking        ``scores``        ``item_1`` … ``item_k``, ``score_1`` … ``score_k``: the k
                                 best items after the Bundle's rank rules
                                 (:mod:`tandem.inference.rank`)
============== ================ =====================================================

The decoded columns are what the server returns, batch jobs write and the prediction log
keeps; monitoring compares them with their reference statistics like any input column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from tandem.data.schema import Task

__all__ = ["GRAPH_OUTPUTS", "Outputs", "prediction_columns"]

#: the graph's output name per task
GRAPH_OUTPUTS: dict[str, str] = {
    "classification": "probabilities",
    "regression": "value",
    "clustering": "distances",
    "projection": "components",
    "anomaly": "score",
    "ranking": "scores",
}


def prediction_columns(classes: Sequence[Any]) -> list[str]:
    """The columns a supervised model predicts: ``label`` and a ``proba_<class>`` per class
    for a classifier (``classes`` not empty), else ``prediction``."""
    return ["label", *(f"proba_{c}" for c in classes)] if classes else ["prediction"]


@dataclass(frozen=True)
class Outputs:
    """A model's output: its task, and what the task needs to decode the graph's tensor.

    Attributes:
        classes: class labels in probability order (classification); item ids in score
            order (ranking).
        width: the number of centres (clustering), components (projection) or items
            recommended (ranking).
        threshold: the anomaly score above which a row is an anomaly (anomaly).
    """

    task: Task
    classes: tuple[Any, ...] = ()
    width: int = 0
    threshold: float | None = None

    @property
    def graph_output(self) -> str:
        return GRAPH_OUTPUTS[self.task]

    @property
    def graph_width(self) -> int | None:
        """Columns of the graph's output (None: as many as classes, known at run time)."""
        if self.task in ("regression", "anomaly"):
            return 1
        if self.task == "ranking":
            return len(self.classes)
        return self.width or None

    @property
    def columns(self) -> list[str]:
        """The decoded columns, in order."""
        if self.task == "clustering":
            return ["cluster", *(f"distance_{c}" for c in range(self.width))]
        if self.task == "projection":
            return [f"component_{i + 1}" for i in range(self.width)]
        if self.task == "anomaly":
            return ["anomaly_score", "anomaly"]
        if self.task == "ranking":
            k = range(1, self.width + 1)
            return [*(f"item_{i}" for i in k), *(f"score_{i}" for i in k)]
        return prediction_columns(self.classes if self.task == "classification" else ())

    @property
    def categorical(self) -> list[str]:
        """Decoded columns that name a class or a cluster: logged and profiled as text."""
        if self.task == "ranking":
            return [f"item_{i}" for i in range(1, self.width + 1)]
        return {"classification": ["label"], "clustering": ["cluster"]}.get(self.task, [])

    @cached_property
    def _names(self) -> list[str]:
        return self.columns

    @cached_property
    def _labels(self) -> np.ndarray:
        return np.asarray(self.classes)

    @cached_property
    def _ids(self) -> np.ndarray:
        """The catalog's ids as objects (a slot may hold None), made once, not per batch."""
        return np.asarray(self.classes, dtype=object)

    def decode(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's output (n, k) as named columns of n values, in :attr:`columns` order."""
        names = self._names
        if self.task == "classification":
            decoded = {"label": self._labels[raw.argmax(axis=1)]}
            decoded.update((n, raw[:, i]) for i, n in enumerate(names[1:]))
            return decoded
        if self.task == "clustering":
            decoded = {"cluster": raw.argmin(axis=1)}
            decoded.update((n, raw[:, i]) for i, n in enumerate(names[1:]))
            return decoded
        if self.task == "anomaly":
            assert self.threshold is not None
            return {"anomaly_score": raw[:, 0], "anomaly": raw[:, 0] > self.threshold}
        if self.task == "ranking":
            return self._top(raw)
        return {n: raw[:, i] for i, n in enumerate(names)}

    def _top(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """The ``width`` best items of each row, best first; a slot no allowed item fills
        (score -inf: excluded) has no item (None) and a NaN score."""
        k = min(self.width, scores.shape[1])
        best = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < scores.shape[1]
            else (np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy())
        )
        picked = np.take_along_axis(scores, best, axis=1)
        order = np.argsort(-picked, axis=1, kind="stable")
        best, picked = (
            np.take_along_axis(best, order, axis=1),
            np.take_along_axis(picked, order, axis=1),
        )
        empty = ~np.isfinite(picked)
        ids = self._ids[best]
        ids[empty] = None
        picked = np.where(empty, np.nan, picked)
        out = {f"item_{i + 1}": ids[:, i] for i in range(k)}
        out.update((f"score_{i + 1}", picked[:, i]) for i in range(k))
        return out

    def as_text(self, decoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``decoded`` as monitoring compares it: :attr:`categorical` columns as str, flags
        as 0.0 / 1.0 (so their rate drifts like a number)."""
        out = dict(decoded)
        for name, values in decoded.items():
            if name in self.categorical and (values.dtype != object or self.task == "ranking"):
                out[name] = np.asarray(
                    ["" if v is None else str(v) for v in values.tolist()], dtype=object
                )
            elif values.dtype == bool:
                out[name] = values.astype(np.float64)
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.graph_output, "classes": list(self.classes)}
        if self.width:
            out["width"] = self.width
        if self.threshold is not None:
            out["threshold"] = self.threshold
        out["columns"] = self.columns
        return out

    @classmethod
    def from_json(cls, task: Task, obj: dict[str, Any]) -> Outputs:
        threshold = obj.get("threshold")
        return cls(
            task,
            tuple(obj.get("classes", ())),
            int(obj.get("width", 0)),
            None if threshold is None else float(threshold),
        )
