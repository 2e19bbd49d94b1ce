"""Reference statistics of a dataset, kept in the Bundle so drift checks never need the data.

Numbers: decile bin edges with counts, mean, std, min, max and the missing rate. Categories:
the frequency of each (the top ones, the rest pooled as ``__other__``) and the missing rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tandem.data.schema import MISSING_CATEGORY, ColumnSpec

__all__ = ["column_profile", "output_profile", "profile_columns"]

N_BINS = 10
#: categories kept by name in the reference statistics; the rest are pooled
MAX_PROFILED = 50
OTHER = "__other__"


def _numeric(values: np.ndarray) -> dict[str, Any]:
    present = values[~np.isnan(values)]
    out: dict[str, Any] = {
        "count": int(values.size),
        "missing_rate": float(1 - present.size / max(values.size, 1)),
    }
    if present.size == 0:
        return out
    edges = np.unique(np.quantile(present, np.linspace(0, 1, N_BINS + 1)))
    # interior edges only: bin i holds values in (edges[i-1], edges[i]]; the ends are open
    inner = edges[1:-1]
    counts = np.bincount(np.searchsorted(inner, present, side="left"), minlength=inner.size + 1)
    out.update(
        mean=float(present.mean()),
        std=float(present.std()),
        min=float(present.min()),
        max=float(present.max()),
        bin_edges=[float(e) for e in inner],
        bin_counts=[int(c) for c in counts],
    )
    return out


def _categorical(values: np.ndarray) -> dict[str, Any]:
    missing = values == MISSING_CATEGORY
    cats, counts = np.unique(values[~missing].astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    top = {str(cats[i]): int(counts[i]) for i in order[:MAX_PROFILED]}
    rest = int(counts[order[MAX_PROFILED:]].sum())
    if rest:
        top[OTHER] = rest
    return {
        "count": int(values.size),
        "missing_rate": float(missing.mean()) if values.size else 0.0,
        "frequencies": top,
    }


def column_profile(spec: ColumnSpec, values: np.ndarray) -> dict[str, Any]:
    """Statistics of one coerced column (see :func:`tandem.data.schema.coerce_column`)."""
    stats = _categorical(values) if spec.kind == "categorical" else _numeric(values)
    return {"kind": spec.kind, **stats}


def profile_columns(
    specs: list[ColumnSpec], columns: Mapping[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Reference statistics for every column, keyed by column name."""
    return {s.name: column_profile(s, columns[s.name]) for s in specs}


def output_profile(columns: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Reference statistics of a model's outputs on held-out data, for prediction drift: text
    columns (the label) as categories, the rest as numbers."""
    return {
        name: column_profile(
            ColumnSpec(name=name, kind="categorical" if values.dtype == object else "numeric"),
            values,
        )
        for name, values in columns.items()
    }
