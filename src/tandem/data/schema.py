"""Column kinds, schema inference, and the one coercion of raw values into typed arrays.

A column is ``numeric`` (float64 in the model graph), ``boolean`` (0/1 as float64) or
``categorical`` (strings in the graph). :func:`coerce_column` is used by training *and* by the
Predictor, so a value is turned into the same number or category string on both sides; that is
what makes training-side and Bundle predictions agree.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tandem.errors import DataError, SchemaError

__all__ = [
    "SPECIAL_KINDS",
    "SUPERVISED",
    "ColumnKind",
    "ColumnSpec",
    "Task",
    "category_strings",
    "coerce_column",
    "infer_columns",
    "infer_task",
    "numeric_arrow_type",
    "without_infinities",
]

#: ``image``, ``text`` and ``items`` (a list of item ids: what a user has taken) columns feed
#: their own models (a CNN, a text encoder, a recommender), one such column per model: see
#: :mod:`tandem.data.images`, :mod:`tandem.models.text` and :mod:`tandem.training.recommend`
ColumnKind = Literal["numeric", "boolean", "categorical", "image", "text", "items"]
#: the kinds with an encode step of their own, one such column per model
SPECIAL_KINDS: tuple[ColumnKind, ...] = ("image", "text", "items")
#: what a model does: the supervised tasks learn a target; clustering, projection and anomaly
#: learn the shape of unlabeled rows (see :mod:`tandem.bundle.outputs` for their outputs)
Task = Literal["classification", "regression", "clustering", "projection", "anomaly", "ranking"]
SUPERVISED: tuple[Task, ...] = ("classification", "regression")

#: integer columns with at most this many distinct values are treated as categories
MAX_INT_CATEGORIES = 10
#: an integer/float target with at most this many distinct whole values is a class label
MAX_TARGET_CLASSES = 20

MISSING_CATEGORY = ""


@dataclass(frozen=True, kw_only=True)
class ColumnSpec:
    """One input column of a model.

    Attributes:
        name: the column name as it appears in the data.
        kind: how the column is encoded; decides the graph input type (double or string).
        categories: for ``categorical``, the categories seen in training (others go to the
            unknown bucket); empty for other kinds.
    """

    name: str
    kind: ColumnKind
    categories: tuple[str, ...] = field(default=())

    @property
    def onnx_type(self) -> Literal["double", "string", "bytes"]:
        """What the column holds as the model takes it (images: encoded file bytes)."""
        if self.kind in ("categorical", "text", "items"):
            return "string"
        return "bytes" if self.kind == "image" else "double"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "type": self.onnx_type}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ColumnSpec:
        return cls(name=obj["name"], kind=obj["kind"], categories=tuple(obj.get("categories", ())))


def _kind_of(name: str, col: pa.ChunkedArray) -> ColumnKind | None:
    t = col.type
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        distinct = pc.count_distinct(col, mode="only_valid").as_py()
        return "categorical" if distinct <= MAX_INT_CATEGORIES else "numeric"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "categorical"
    if pa.types.is_null(t):
        return None
    raise DataError(
        f"column '{name}' has type {t}, which tandem cannot use as a feature yet: "
        f"convert it to a number or a string, or leave it out with --ignore {name}"
    )


def infer_columns(table: pa.Table, *, target: str, ignore: Sequence[str] = ()) -> list[ColumnSpec]:
    """Feature columns of ``table`` (all but the target and ``ignore``), with their kinds.

    Columns that hold no value at all are left out: they carry no information.
    """
    unknown = [c for c in ignore if c not in table.column_names]
    if unknown:
        raise DataError(
            f"cannot ignore {unknown}: no such columns; columns are {table.column_names}"
        )
    specs = []
    for name in table.column_names:
        if name == target or name in ignore:
            continue
        kind = _kind_of(name, table.column(name))
        if kind is not None:
            specs.append(ColumnSpec(name=name, kind=kind))
    if not specs:
        raise DataError(
            f"no feature columns left besides the target '{target}': the data needs at least one"
        )
    return specs


def infer_task(target: pa.ChunkedArray, name: str) -> Task:
    """``classification`` for strings, booleans and few whole numbers; else ``regression``."""
    t = target.type
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_boolean(t)
        or pa.types.is_dictionary(t)
    ):
        return "classification"
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(f"target '{name}' has type {t}: expected numbers, strings or booleans")
    values = np.unique(target.drop_null().to_numpy())
    whole = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
    return "classification" if whole and len(values) <= MAX_TARGET_CLASSES else "regression"


def _is_na(value: Any) -> bool:
    # pandas' nullable dtypes hand out pd.NA, which we cannot import here (no pandas at inference)
    return value is None or type(value).__name__ == "NAType"


def _canonical(value: Any) -> str:
    if _is_na(value):
        return MISSING_CATEGORY
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING_CATEGORY
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, np.floating):
        return _canonical(float(value))
    return str(value)


def category_strings(values: Any, name: str = "categorical") -> np.ndarray:
    """Values as category strings: ints as ``"3"``, whole floats as ``"3"``, missing as ``""``.

    Returns:
        object array of str, shape (n,)
    """
    if isinstance(values, pa.ChunkedArray | pa.Array):
        t = values.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t):
            filled = pc.fill_null(pc.cast(values, pa.string()), MISSING_CATEGORY)
            return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=object)
        values = values.to_numpy(zero_copy_only=False)
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(_one_dimensional(name, arr))
    if arr.dtype.kind in "iu":
        return arr.astype(str).astype(object)
    return np.fromiter((_canonical(v) for v in arr.ravel()), dtype=object, count=arr.size)


def numeric_arrow_type(t: pa.DataType) -> bool:
    """An Arrow type a numeric column may hold: integers, floats, booleans, decimals, or
    nothing but nulls."""
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
        or pa.types.is_null(t)
    )


def _numbers(name: str, values: Any) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if pa.types.is_null(values.type):
            return np.full(len(values), np.nan)
        if not numeric_arrow_type(values.type):
            # text is refused rather than parsed, as for every other container
            raise SchemaError(
                f"column '{name}' must hold numbers; got values of type {values.type}"
            )
        out = np.asarray(
            pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    elif isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        out = values.astype(np.float64, copy=False).reshape(_one_dimensional(name, values))
    else:
        items = (
            values.reshape(_one_dimensional(name, values)).tolist()
            if isinstance(values, np.ndarray)
            else list(values)
        )
        if all(type(v) is float or type(v) is int for v in items):
            out = np.array(items, dtype=np.float64)
        else:
            out = np.fromiter(
                (_number(name, i, v) for i, v in enumerate(items)),
                dtype=np.float64,
                count=len(items),
            )
    return without_infinities(out)


def without_infinities(values: np.ndarray) -> np.ndarray:
    """±inf as missing (NaN): the graph imputes missing values, and an infinity would turn
    scaled features, and so probabilities, into NaN. Coerced columns (training) and the graph's
    numeric input (:func:`tandem.bundle.manifest.graph_feed`, prediction) both pass here."""
    infinite = np.isinf(values)
    return np.where(infinite, np.nan, values) if infinite.any() else values


def _one_dimensional(name: str, values: np.ndarray) -> int:
    """The length of a column given as shape (n,) or (n, 1); anything else is refused."""
    if values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1):
        return int(values.shape[0])
    raise SchemaError(
        f"column '{name}' must be one value per row, shape (n,); got an array of shape {values.shape}"
    )


def _number(name: str, row: int, value: Any) -> float:
    if _is_na(value):
        return math.nan
    if isinstance(value, int | float | np.number | np.bool_):
        return float(value)
    raise SchemaError(
        f"column '{name}' must hold numbers; row {row} has {value!r} ({type(value).__name__}): "
        "send a number, or null for a missing value"
    )


def duplicated_names(names: Iterable[Any]) -> list[str]:
    """The names (as strings) that appear more than once, sorted."""
    counts = Counter(str(n) for n in names)
    return sorted(n for n, count in counts.items() if count > 1)


def coerce_column(spec: ColumnSpec, values: Any) -> np.ndarray:
    """Raw values of one column as the graph expects them.

    Args:
        spec: the column's signature.
        values: a sequence, numpy array or Arrow array of n values (None/NaN = missing).

    Returns:
        float64 array of shape (n,) for numeric and boolean columns, object array of str for
        categorical ones.
    """
    if spec.kind == "categorical":
        return category_strings(values, spec.name)
    return _numbers(spec.name, values)
