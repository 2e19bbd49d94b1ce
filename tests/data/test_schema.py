from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem.data.schema import (
    ColumnSpec,
    category_strings,
    coerce_column,
    infer_columns,
    infer_task,
)
from tandem.errors import DataError, SchemaError


def test_kinds_are_inferred_from_types_and_cardinality() -> None:
    table = pa.table(
        {
            "amount": [1.5, 2.0, None, 4.0],
            "few_ints": [1, 2, 1, 3],
            "many_ints": list(range(0, 40, 10)),
            "city": ["a", "b", None, "a"],
            "flag": [True, False, None, True],
            "empty": pa.nulls(4),
            "y": [0, 1, 0, 1],
        }
    )
    table = table.set_column(2, "many_ints", pa.array(np.arange(4) * 1000))
    kinds = {s.name: s.kind for s in infer_columns(table, target="y")}
    # with only 4 distinct values, many_ints counts as categorical too: cardinality, not range
    assert kinds == {
        "amount": "numeric",
        "few_ints": "categorical",
        "many_ints": "categorical",
        "city": "categorical",
        "flag": "boolean",
    }
    wide = pa.table({"n": np.arange(100), "y": np.zeros(100)})
    assert infer_columns(wide, target="y")[0].kind == "numeric"


def test_unsupported_type_names_the_column_and_the_fix() -> None:
    table = pa.table({"when": pa.array([1, 2], pa.timestamp("s")), "y": [0, 1]})
    with pytest.raises(DataError, match="column 'when'.*--ignore when"):
        infer_columns(table, target="y")


def test_ignore_and_no_features_left() -> None:
    table = pa.table({"id": [1, 2], "y": [0, 1]})
    with pytest.raises(DataError, match="no feature columns"):
        infer_columns(table, target="y", ignore=["id"])
    with pytest.raises(DataError, match="cannot ignore"):
        infer_columns(table, target="y", ignore=["nope"])


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b"], "classification"),
        ([True, False], "classification"),
        ([0, 1, 1], "classification"),
        ([0.0, 1.0, 2.0], "classification"),
        ([0.5, 1.2, 3.3], "regression"),
        (list(range(100)), "regression"),
    ],
)
def test_task_is_inferred_from_the_target(values: list[object], task: str) -> None:
    assert infer_task(pa.chunked_array([values]), "y") == task


@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=30))
def test_integers_give_the_same_category_whatever_their_container(values: list[int]) -> None:
    """An integer category sent as int, as whole float, as string or via Arrow maps to one key."""
    expected = [str(v) for v in values]
    assert category_strings(np.array(values)).tolist() == expected
    assert category_strings(np.array(values, dtype=float)).tolist() == expected
    assert category_strings(pa.array(values)).tolist() == expected
    assert category_strings(np.array([str(v) for v in values], dtype=object)).tolist() == expected
    assert category_strings(list(values)).tolist() == expected


def test_missing_categories_become_the_empty_string() -> None:
    assert category_strings(pa.array(["a", None])).tolist() == ["a", ""]
    assert category_strings(np.array([1.0, np.nan])).tolist() == ["1", ""]
    assert category_strings(np.array(["a", None], dtype=object)).tolist() == ["a", ""]


def test_numeric_coercion_accepts_null_and_rejects_text_naming_the_column() -> None:
    spec = ColumnSpec(name="age", kind="numeric")
    assert np.isnan(coerce_column(spec, [1, None])[1])
    assert np.isnan(coerce_column(spec, pa.array([1.0, None]))[1])
    with pytest.raises(SchemaError, match="column 'age'.*'abc'"):
        coerce_column(spec, [1, "abc"])
    with pytest.raises(SchemaError, match="column 'age'"):
        coerce_column(spec, pa.array(["x"]))
