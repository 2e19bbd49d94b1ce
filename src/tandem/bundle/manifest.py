"""The Bundle manifest: what a frozen model takes, gives, is, and how it was made.

``manifest.json`` is the Bundle's table of contents. The fields the Predictor relies on are
typed attributes; descriptive content (metrics, reference statistics, training profile,
leaderboard, lineage) lives in ``details`` and is shown, not interpreted, by inference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from tandem.bundle.outputs import Outputs
from tandem.data.schema import ColumnSpec, Task, without_infinities
from tandem.errors import BundleError

__all__ = [
    "CATEGORICAL_INPUT",
    "FORMAT",
    "FORMAT_VERSION",
    "NUMERIC_INPUT",
    "FileEntry",
    "Manifest",
    "graph_feed",
]

FORMAT = "tandem.bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPH = "model.onnx"
#: a uniform sample of the training rows, for the tests that need rows (Parquet)
REFERENCE_SAMPLE = "reference_sample.parquet"
#: graph inputs, column-major: every numeric and boolean column as one row of a (k, n) double
#: matrix, every categorical column as one row of an (m, n) string matrix, in signature order.
#: One input per column costs ONNX Runtime ~3 µs per input per call (32 columns: 120 µs against
#: 45 µs for one matrix); column-major because stacking k columns as rows is one cheap
#: np.array call (9 µs at n=1, 77 µs at n=4096 for k=32) while stacking them as columns costs
#: three times that, and the graph transposes for free.
NUMERIC_INPUT = "numeric"
CATEGORICAL_INPUT = "categorical"


def graph_feed(
    numeric: Sequence[Any] | np.ndarray, categorical: Sequence[Any]
) -> dict[str, np.ndarray]:
    """The graph's inputs from coerced columns (see :func:`tandem.data.schema.coerce_column`).

    Args:
        numeric: the numeric and boolean columns in signature order, float64 of shape (n,),
            or already stacked as a (k, n) float64 matrix.
        categorical: the categorical columns in signature order, str objects of shape (n,).

    Returns:
        ``{"numeric": (k, n) float64, "categorical": (m, n) object}``, each present only when
        the signature has such columns.

    Raises:
        ValueError: when the columns differ in length.
    """
    feed = {}
    if isinstance(numeric, np.ndarray) or numeric:
        feed[NUMERIC_INPUT] = without_infinities(np.asarray(numeric, dtype=np.float64))
    if categorical:
        feed[CATEGORICAL_INPUT] = np.array(categorical, dtype=object)
    if any(v.ndim != 2 for v in feed.values()) or len({v.shape[1] for v in feed.values()}) > 1:
        raise ValueError("columns differ in length")
    return feed


def split_kinds(inputs: Sequence[ColumnSpec]) -> tuple[list[ColumnSpec], list[ColumnSpec]]:
    """The signature's numeric (and boolean) columns and its categorical ones, in order."""
    return [c for c in inputs if c.kind in ("numeric", "boolean")], [
        c for c in inputs if c.kind == "categorical"
    ]


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Everything ``manifest.json`` holds.

    Attributes:
        inputs: the input signature, one typed column per graph input, in graph order.
        classes: class labels in the order of the probability columns (classification), else ().
        width: centres (clustering) or components (projection) the graph outputs, else 0.
        threshold: the anomaly score above which a row is an anomaly (anomaly), else None.
        files: every file of the Bundle besides the manifest, with its SHA-256 and size.
        details: metrics, data fingerprint, reference statistics, training profile, lineage.
    """

    name: str
    version: int
    created_at: str
    task: Task
    family: str
    target: str
    inputs: tuple[ColumnSpec, ...]
    classes: tuple[Any, ...] = ()
    width: int = 0
    threshold: float | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def outputs(self) -> Outputs:
        """What the graph outputs and how it decodes (see :mod:`tandem.bundle.outputs`)."""
        return Outputs(self.task, self.classes, self.width, self.threshold)

    @property
    def output(self) -> str:
        """Name of the graph output: ``probabilities``, ``value``, ``distances``, ..."""
        return self.outputs.graph_output

    def example_row(self) -> dict[str, Any]:
        """A valid input row, as JSON carries it (warm-up calls, synthetic load): 0.0 for
        numbers, the first known category for categories, a sentence for text, a grey PNG of
        the model's input size (base64) for an image, three catalog ids for a history."""
        return {c.name: self._example(c) for c in self.inputs}

    def _example(self, column: ColumnSpec) -> Any:
        if column.kind == "categorical":
            return column.categories[0] if column.categories else ""
        if column.kind == "text":
            return "an example text of a few words"
        if column.kind == "items":
            return [str(c) for c in self.classes[:3]]
        if column.kind == "image":
            import base64
            import io

            from PIL import Image

            image = self.details.get("image", {})
            height, width = image.get("size", (8, 8))
            mode = "L" if image.get("channels", 1) == 1 else "RGB"
            buffer = io.BytesIO()
            Image.new(mode, (width, height), 128 if mode == "L" else (128, 128, 128)).save(
                buffer, format="PNG"
            )
            return base64.b64encode(buffer.getvalue()).decode()
        return 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "task": self.task,
            "family": self.family,
            "target": self.target,
            "inputs": [c.to_json() for c in self.inputs],
            "outputs": self.outputs.to_json(),
            "files": {
                k: {"sha256": v.sha256, "bytes": v.bytes} for k, v in sorted(self.files.items())
            },
            **self.details,
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=False, allow_nan=False).encode()

    @classmethod
    def loads(cls, raw: bytes, where: str) -> Manifest:
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(
                f"{where}/{MANIFEST} is not valid JSON ({exc}); the Bundle is damaged: re-register the model"
            ) from exc
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise BundleError(f"{where}/{MANIFEST} is not a tandem Bundle manifest")
        if obj.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{where} has Bundle format version {obj.get('format_version')}; this tandem reads version "
                f"{FORMAT_VERSION}: upgrade tandem to load it"
            )
        known = {
            "format",
            "format_version",
            "name",
            "version",
            "created_at",
            "task",
            "family",
            "target",
            "inputs",
            "outputs",
            "files",
        }
        try:
            outputs = Outputs.from_json(obj["task"], obj["outputs"])
            return cls(
                name=obj["name"],
                version=int(obj["version"]),
                created_at=obj["created_at"],
                task=obj["task"],
                family=obj["family"],
                target=obj["target"],
                inputs=tuple(ColumnSpec.from_json(c) for c in obj["inputs"]),
                classes=outputs.classes,
                width=outputs.width,
                threshold=outputs.threshold,
                files={k: FileEntry(v["sha256"], int(v["bytes"])) for k, v in obj["files"].items()},
                details={k: v for k, v in obj.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"{where}/{MANIFEST} lacks or mangles the field {exc}; the Bundle is damaged"
            ) from exc
