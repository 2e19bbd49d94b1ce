"""Rows a batch job cannot score, found before the Predictor sees them, one by one.

The Predictor refuses a whole batch over one bad value (text in a numeric column): right for a
request, wrong for a night's job over millions of rows. Here each chunk's signature columns
are checked row by row first. A numeric column that arrived as text (CSV columns are read so;
JSON Lines columns whose values mix kinds) is converted value by value: missing markers
become missing values, true/false become 1/0 (which the Bundle's graph imputes), numbers become numbers, and
anything else marks its row bad with a reason. Columns that arrived typed need no check.

What happens to bad rows is the job's ``--on-error`` policy (:mod:`tandem.batch.job`).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tandem.data.schema import ColumnSpec, numeric_arrow_type
from tandem.errors import SchemaError

__all__ = ["Checked", "check_rows", "check_types"]


@functools.cache
def _markers(kind: str) -> pa.Array:
    """What Arrow's CSV reader takes for a missing value (``""``, ``NA``, ``null``, ``NaN``...),
    for true and for false (``true``, ``False``...): text columns read them as a typed column
    would. Built on first use: converting a Python list loads pandas into pyarrow, which an
    import of tandem.batch must not pay for."""
    options = pacsv.ConvertOptions()
    values = {"missing": options.null_values, "true": options.true_values,
              "false": options.false_values}[kind]  # fmt: skip
    return pa.array(sorted(values), pa.string())


#: a decimal number as text: what the conversion to float64 accepts
_NUMBER = r"^\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))\s*$"


@dataclass(frozen=True)
class Checked:
    """A chunk's columns ready for the Predictor, and the rows that are not.

    Attributes:
        columns: the signature's columns; a numeric column that came as text is float64 here,
            with bad rows null.
        bad: row (within the chunk) -> (column, the value as text, reason), for the first
            problem of each bad row.
    """

    columns: dict[str, pa.Array | pa.ChunkedArray]
    bad: dict[int, tuple[str, str, str]]


def _text_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def check_types(specs: Sequence[ColumnSpec], schema: pa.Schema, where: str, *, typed: bool) -> None:
    """SchemaError unless every signature column is in ``schema`` with a type it can hold.

    Args:
        typed: the file declares its types (Parquet): a numeric column stored as text is then
            the wrong type, not a column with some bad values.
    """
    names = set(schema.names)
    missing = [s.name for s in specs if s.name not in names]
    if missing:
        raise SchemaError(
            f"{where} lacks column(s) {missing} that the model needs (it needs "
            f"{[s.name for s in specs]}); it has {schema.names}"
        )
    for spec in specs:
        t = schema.field(spec.name).type
        if spec.kind == "items":
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                raise SchemaError(
                    f"{where}: column '{spec.name}' is of type {t}, but the model needs a list of "
                    "item ids per row there (a JSON Lines or Parquet list column)"
                )
            continue
        if spec.kind == "text":
            if not _text_type(t) and not pa.types.is_null(t):
                raise SchemaError(
                    f"{where}: column '{spec.name}' is of type {t}, but the model needs text there"
                )
            continue
        if spec.kind == "image":
            if not (_bytes_type(t) or _text_type(t)):
                raise SchemaError(
                    f"{where}: column '{spec.name}' is of type {t}, but the model needs image "
                    "file bytes there (binary, or base64 text)"
                )
            continue
        if spec.kind == "categorical":
            ok = _text_type(t) or numeric_arrow_type(t)
        else:
            ok = numeric_arrow_type(t) or (_text_type(t) and not typed)
        if not ok:
            want = "numbers" if spec.kind != "categorical" else "text or numbers (a category)"
            raise SchemaError(
                f"{where}: column '{spec.name}' is of type {t}, but the model needs {want} "
                "there: convert the column, or score a file where it holds that type"
            )


def check_rows(
    specs: Sequence[ColumnSpec],
    batch: pa.RecordBatch | pa.Table,
    read_bad: Sequence[tuple[int, str]] = (),
) -> Checked:
    """Convert ``batch``'s signature columns for the Predictor and find its bad rows.

    ``read_bad`` are rows the reader already found unreadable (their reasons come first).
    """
    bad: dict[int, tuple[str, str, str]] = {i: ("", "", why) for i, why in read_bad}
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for spec in specs:
        values = batch.column(spec.name)
        if spec.kind == "image":
            columns[spec.name] = _readable_images(spec.name, values, bad)
            continue
        if spec.kind == "text":
            columns[spec.name] = _classifiable_texts(spec.name, values, bad)
            continue
        if spec.kind == "items":  # a missing list is a user without history
            columns[spec.name] = pa.array([v or [] for v in values.to_pylist()])
            continue
        if spec.kind != "categorical" and _text_type(values.type):
            values = _numbers_from_text(spec.name, values, bad)
        elif spec.kind == "categorical" and not (
            _text_type(values.type) or numeric_arrow_type(values.type)
        ):
            raise SchemaError(  # a JSON Lines column of objects or lists, say
                f"column '{spec.name}' holds values of type {values.type}; the model needs text "
                "or numbers there"
            )
        columns[spec.name] = values
    return Checked(columns, bad)


def _bytes_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t))


def _readable_images(name: str, values: pa.Array, bad: dict[int, tuple[str, str, str]]) -> pa.Array:
    """The column as given; rows whose value is not an image (by its header) go to ``bad``
    and are replaced by an empty value (their predictions are dropped)."""
    from tandem.data.images import blank_png, readable_image

    items = values.to_pylist()
    for i, value in enumerate(items):
        why = readable_image(value, name, i)
        if why is not None and i not in bad:
            shown = value[:16] if isinstance(value, bytes | str) else value
            bad[i] = (name, repr(shown), why)
    if not any(i in bad for i in range(len(items))):
        return values
    png = blank_png()
    blank = base64.b64encode(png).decode() if _text_type(values.type) else png
    return pa.array([blank if i in bad else v for i, v in enumerate(items)], values.type)


def _classifiable_texts(
    name: str, values: pa.Array, bad: dict[int, tuple[str, str, str]]
) -> pa.Array:
    """The column as text; missing or empty texts go to ``bad`` (a stand-in is scored in
    their place and dropped)."""
    from tandem.features.text import text_problem

    items = values.to_pylist()
    wrong = False
    for i, value in enumerate(items):
        why = text_problem(value)
        if why is not None:
            wrong = True
            bad.setdefault(i, (name, repr(value)[:32], f"row {i} of column '{name}' {why}"))
    if not wrong and _text_type(values.type):
        return values
    return pa.array(["-" if text_problem(v) else v for v in items], pa.string())


def _numbers_from_text(
    name: str, values: pa.Array, bad: dict[int, tuple[str, str, str]]
) -> pa.Array:
    """float64 of a text column; rows that are neither missing nor a number go to ``bad``."""
    trimmed = pc.utf8_trim_whitespace(values)
    missing = pc.fill_null(pc.is_in(trimmed, _markers("missing")), True)
    number = pc.fill_null(pc.match_substring_regex(values, _NUMBER), False)
    true = pc.fill_null(pc.is_in(trimmed, _markers("true")), False)
    false = pc.fill_null(pc.is_in(trimmed, _markers("false")), False)
    wrong = pc.invert(pc.or_(pc.or_(missing, number), pc.or_(true, false)))
    rows = np.flatnonzero(np.asarray(wrong.to_numpy(zero_copy_only=False)))
    for i in rows.tolist():
        if i not in bad:
            text = values[i].as_py()
            bad[i] = (name, text, f"column '{name}' needs a number; got {text!r}")
    parsed = pc.cast(pc.if_else(number, trimmed, pa.scalar(None, pa.string())), pa.float64())
    parsed = pc.if_else(pc.and_(true, pc.invert(number)), pa.scalar(1.0), parsed)
    return pc.if_else(pc.and_(false, pc.invert(number)), pa.scalar(0.0), parsed)
