"""``tandem feedback``: late ground truth, joined to the logged predictions it belongs to.

A labels file (CSV, Parquet or JSON Lines) holds the true value in a column named as the
model's target (or ``label``) and says which prediction it belongs to, either

- by request: ``request_id`` (the ``X-Request-Id`` the server answered with; a batch job's
  id) and ``row`` (the row within the request; 0 when absent, the one row of a one-row
  request), or
- by key: ``--key COLUMN``, an input column the prediction log keeps (an id the model was
  given, a date); every logged prediction with that value gets the label.

The join is made once, here, against the log as it is now, and what matched is stored under
``predictions/<model>/labels/`` as (request id, row, true value, when it arrived): monitoring
then reads labelled predictions without joining again. A row labelled twice keeps the later
label. Labels that match no logged prediction are counted and not stored (log the
predictions first; a sampled log keeps only a share of them).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tandem.bundle.store import load_bundle
from tandem.config import Settings
from tandem.data.readers import read_table
from tandem.data.schema import SUPERVISED
from tandem.errors import DataError
from tandem.monitoring.predictions import REQUEST_ID, ROW, TIME, log_folder, read_log
from tandem.registry import Registry

__all__ = ["TRUE", "Feedback", "add_labels", "labelled", "read_labels"]

#: the true value's column in stored labels and in :func:`labelled`'s table
TRUE = "__true"
ARRIVED = "__labelled_at"


@dataclass(frozen=True)
class Feedback:
    model: str
    received: int
    matched_rows: int
    unmatched: int
    stored: Path | None

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "stored": None if self.stored is None else str(self.stored)}


def _true_values(
    values: pa.ChunkedArray, task: str, classes: tuple[Any, ...], column: str
) -> pa.Array:
    """The labels as the model's classes (or numbers, for regression); refuses the rest."""
    if task == "regression":
        try:
            return pc.cast(values, pa.float64()).combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(
                f"labels column '{column}' must hold numbers for this regression model; got {values.type}"
            ) from None
    by_text = {str(c): c for c in classes}
    raw = values.to_pylist()
    unknown = sorted({str(v) for v in raw if v is not None and str(v) not in by_text})
    if unknown:
        raise DataError(
            f"labels column '{column}' holds value(s) {unknown[:5]} that are not classes of the "
            f"model {list(classes)}: fix or drop those rows"
        )
    return pa.array([None if v is None else by_text[str(v)] for v in raw])


def add_labels(
    registry: Registry,
    name: str,
    labels: str | Path,
    *,
    key: str | None = None,
    label_column: str | None = None,
) -> Feedback:
    """Join the labels in ``labels`` to ``name``'s logged predictions and store them.

    Raises:
        DataError: the file lacks the join or label columns, holds labels that are not the
            model's classes, or nothing is logged for the model yet.
    """
    version = registry.get(name)
    manifest = load_bundle(version.path, expected_digest=version.digest).manifest
    if manifest.task not in SUPERVISED:
        raise DataError(
            f"{version.ref} is a {manifest.task} model: it predicts no label, so there is no "
            "ground truth to join"
        )
    table = read_table(labels)
    column = label_column or next(
        (c for c in (manifest.target, "label") if c in table.column_names), None
    )
    if column is None or column not in table.column_names:
        raise DataError(
            f"{labels} has no labels column: name it '{manifest.target}' (the model's target) "
            "or 'label', or pass --label-column"
        )
    # every label is converted (and checked) once, matched or not: a typo is named, not dropped
    true = _true_values(table.column(column), manifest.task, manifest.classes, column)
    log = read_log(version.name, settings=registry.settings)
    left, right, keys = _sides(table, true, log, key, str(labels))
    joined = left.join(right, keys, join_type="inner")
    rows = joined.select([REQUEST_ID, ROW, TRUE]).filter(pc.is_valid(joined.column(TRUE)))
    unmatched = left.join(right.select(keys), keys, join_type="left anti").num_rows
    stored = None
    if rows.num_rows:
        rows = rows.append_column(
            ARRIVED, pa.array(np.full(rows.num_rows, _now_us()), pa.timestamp("us", tz="UTC"))
        )
        folder = log_folder(version.name, registry.settings) / "labels"
        folder.mkdir(parents=True, exist_ok=True)
        stored = folder / f"labels-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
        temp = folder / f".{stored.name}.tmp"
        pq.write_table(rows, temp)
        os.replace(temp, stored)
    return Feedback(version.name, table.num_rows, rows.num_rows, unmatched, stored)


def _now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1e6)


def _sides(
    table: pa.Table, true: pa.Array, log: pa.Table, key: str | None, where: str
) -> tuple[pa.Table, pa.Table, list[str]]:
    """The labels (join keys + :data:`TRUE`), the logged predictions (join keys + request id
    and row), and the join keys: (request id, row), or ``key``."""
    if key is None:
        if "request_id" not in table.column_names:
            raise DataError(
                f"{where} has no 'request_id' column: give the X-Request-Id each prediction was "
                "answered with (and 'row' for requests of several rows), or join by an input "
                "column with --key COLUMN"
            )
        rows = (
            pc.cast(table.column("row"), pa.int64())
            if "row" in table.column_names
            else pa.array(np.zeros(table.num_rows, dtype=np.int64))
        )
        left = pa.table(
            {REQUEST_ID: pc.cast(table.column("request_id"), pa.string()), ROW: rows, TRUE: true}
        )
        right = log.select([REQUEST_ID, ROW]).cast(
            pa.schema([(REQUEST_ID, pa.string()), (ROW, pa.int64())])
        )
        return left, right, [REQUEST_ID, ROW]
    if key not in table.column_names:
        raise DataError(f"{where} has no column '{key}' to join on (--key)")
    if key not in log.column_names:
        raise DataError(
            f"the prediction log has no column '{key}': --key must be an input column of the model"
        )
    right = log.select([key, REQUEST_ID, ROW])
    left = pa.table({key: pc.cast(table.column(key), right.schema.field(key).type), TRUE: true})
    return left, right, [key]


def read_labels(model: str, settings: Settings | None = None) -> pa.Table | None:
    """Every stored label of ``model``, the latest per (request id, row); None when none."""
    folder = log_folder(model, settings) / "labels"
    files = sorted(folder.glob("labels-*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    # the latest label of each (request id, row): the first of its group in arrival order,
    # newest first
    table = table.sort_by([(ARRIVED, "descending")])
    table = table.append_column("__i", pa.array(np.arange(table.num_rows)))
    first = table.group_by([REQUEST_ID, ROW]).aggregate([("__i", "min")]).column("__i_min")
    return table.take(first).drop_columns(["__i"])


def labelled(log: pa.Table, model: str, settings: Settings | None = None) -> pa.Table | None:
    """The logged predictions in ``log`` that have a label, with it in :data:`TRUE`, in time
    order; None when none has."""
    labels = read_labels(model, settings)
    if labels is None:
        return None
    right = labels.select([REQUEST_ID, ROW, TRUE]).cast(
        pa.schema(
            [(REQUEST_ID, pa.string()), (ROW, pa.int64()), (TRUE, labels.schema.field(TRUE).type)]
        )
    )
    left = log.set_column(
        log.schema.get_field_index(ROW), ROW, pc.cast(log.column(ROW), pa.int64())
    )
    joined = left.join(right, [REQUEST_ID, ROW], join_type="inner")
    return joined.sort_by(TIME) if joined.num_rows else None
