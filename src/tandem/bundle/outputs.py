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
}


def prediction_columns(classes: Sequence[Any]) -> list[str]:
    """The columns a supervised model predicts: ``label`` and a ``proba_<class>`` per class
    for a classifier (``classes`` not empty), else ``prediction``."""
    return ["label", *(f"proba_{c}" for c in classes)] if classes else ["prediction"]


@dataclass(frozen=True)
class Outputs:
    """A model's output: its task, and what the task needs to decode the graph's tensor.

    Attributes:
        classes: class labels in probability order (classification).
        width: the number of centres (clustering) or components (projection).
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
        return prediction_columns(self.classes if self.task == "classification" else ())

    @property
    def categorical(self) -> list[str]:
        """Decoded columns that name a class or a cluster: logged and profiled as text."""
        return {"classification": ["label"], "clustering": ["cluster"]}.get(self.task, [])

    @cached_property
    def _names(self) -> list[str]:
        return self.columns

    @cached_property
    def _labels(self) -> np.ndarray:
        return np.asarray(self.classes)

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
        return {n: raw[:, i] for i, n in enumerate(names)}

    def as_text(self, decoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``decoded`` as monitoring compares it: :attr:`categorical` columns as str, flags
        as 0.0 / 1.0 (so their rate drifts like a number)."""
        out = dict(decoded)
        for name, values in decoded.items():
            if name in self.categorical and values.dtype != object:
                out[name] = np.asarray([str(v) for v in values.tolist()], dtype=object)
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
