from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import tandem
from tandem import Predictor, Registry, Settings
from tandem.errors import NotFoundError, SchemaError
from tests.helpers import mixed_table


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Predictor, pa.Table]:
    home = tmp_path_factory.mktemp("home")
    with Registry(Settings(home=home)) as reg:
        tandem.train(mixed_table(400), target="target", name="houses", model="gbdt", registry=reg)
        predictor = tandem.load("houses@latest", registry=reg)
    return predictor, mixed_table(50, seed=3).drop_columns(["target"])


def test_every_row_container_gives_the_same_numbers(trained: tuple[Predictor, pa.Table]) -> None:
    predictor, rows = trained
    from_arrow = predictor.predict(rows)
    assert isinstance(from_arrow, pa.Table)
    assert from_arrow.column_names == ["label", "proba_no", "proba_yes"]
    expected = from_arrow.to_pylist()
    frame = rows.to_pandas()
    frame.index = pd.RangeIndex(100, 150)
    from_pandas = predictor.predict(frame)
    assert isinstance(from_pandas, pd.DataFrame) and list(from_pandas.index) == list(
        range(100, 150)
    )
    assert from_pandas.to_dict("records") == expected
    assert predictor.predict(rows.to_pylist()) == expected
    columns = {c: rows.column(c).to_numpy(zero_copy_only=False) for c in rows.column_names}
    assert pa.table(predictor.predict(columns)).to_pylist() == expected
    assert predictor.predict(rows.to_pylist()[7]) == expected[7]


def test_labels_keep_their_type_and_probabilities_sum_to_one(
    trained: tuple[Predictor, pa.Table],
) -> None:
    predictor, rows = trained
    out = predictor.predict(rows)
    assert set(out.column("label").to_pylist()) <= {"no", "yes"}
    np.testing.assert_allclose(
        out.column("proba_no").to_numpy() + out.column("proba_yes").to_numpy(), 1.0
    )


def test_extra_columns_are_ignored_and_order_does_not_matter(
    trained: tuple[Predictor, pa.Table],
) -> None:
    predictor, rows = trained
    shuffled = rows.select(list(reversed(rows.column_names))).append_column(
        "id", pa.array(range(50))
    )
    assert predictor.predict(shuffled).equals(predictor.predict(rows))


def test_missing_column_is_named(trained: tuple[Predictor, pa.Table]) -> None:
    predictor, rows = trained
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['city'\]"):
        predictor.predict(rows.drop_columns(["city"]))
    records = rows.to_pylist()
    del records[3]["x1"]
    with pytest.raises(SchemaError, match=r"row 3 lacks column\(s\) \['x1'\]"):
        predictor.predict(records)


def test_wrong_type_is_named(trained: tuple[Predictor, pa.Table]) -> None:
    predictor, rows = trained
    records = rows.to_pylist()
    records[2]["x1"] = "twelve"
    with pytest.raises(SchemaError, match="column 'x1'.*'twelve'"):
        predictor.predict(records)
    with pytest.raises(SchemaError, match="cannot predict on a int"):
        predictor.predict(42)


def test_unseen_categories_and_missing_values_still_predict(
    trained: tuple[Predictor, pa.Table],
) -> None:
    predictor, rows = trained
    row = rows.to_pylist()[0]
    odd = {**row, "city": "marseille", "rooms": 99, "x2": None, "garden": None}
    out = predictor.predict(odd)
    assert out["label"] in ("no", "yes") and 0 <= out["proba_yes"] <= 1


def test_empty_input_gives_empty_output(trained: tuple[Predictor, pa.Table]) -> None:
    predictor, rows = trained
    assert predictor.predict(rows.slice(0, 0)).num_rows == 0


def test_load_by_path_and_unknown_references(
    home: Path, trained: tuple[Predictor, pa.Table]
) -> None:
    predictor, rows = trained
    again = tandem.load(predictor.bundle.path)
    assert again.predict(rows).equals(predictor.predict(rows))
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        tandem.load("nope")


def test_columns_of_different_lengths_are_refused(trained: tuple[Predictor, pa.Table]) -> None:
    predictor, rows = trained
    columns = {c: rows.column(c).to_numpy(zero_copy_only=False) for c in rows.column_names}
    columns["x2"] = columns["x2"][:-1]
    with pytest.raises(SchemaError, match="different lengths.*'x2': 49"):
        predictor.predict(columns)


def test_a_numeric_matrix_in_signature_order_predicts_like_its_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    table = pa.table(
        {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] - x[:, 2] > 0).astype(int)}
    )
    with Registry(Settings(home=tmp_path)) as reg:
        tandem.train(table, target="y", name="m", model="linear", registry=reg)
        predictor = tandem.load("m", registry=reg)
    assert predictor.input_names == ["a", "b", "c"]
    for rows in (x[:1], x[:50], np.asfortranarray(x[:50]), x[:50].astype(np.float32)):
        by_matrix = predictor.predict(rows)
        by_columns = predictor.predict({n: rows[:, j] for j, n in enumerate(predictor.input_names)})
        for name in predictor.output_columns:
            np.testing.assert_array_equal(by_matrix[name], by_columns[name])
    with pytest.raises(SchemaError, match=r"shape \(n, 3\).*\['a', 'b', 'c'\]"):
        predictor.predict(x[:, :2])


def test_a_matrix_for_a_model_with_categories_goes_column_by_column(
    trained: tuple[Predictor, pa.Table],
) -> None:
    predictor, rows = trained
    matrix = np.array(
        [[r[n] for n in predictor.input_names] for r in rows.to_pylist()], dtype=object
    )
    by_matrix = predictor.predict(matrix)
    assert list(by_matrix["label"]) == predictor.predict(rows).column("label").to_pylist()


def test_pandas_missing_values_count_as_missing(trained: tuple[Predictor, pa.Table]) -> None:
    """pd.NA (nullable dtypes) means missing, as None and NaN do, in every container."""
    predictor, rows = trained
    records = rows.to_pylist()[:5]
    with_none = [{**r, "x2": None, "city": None, "rooms": None} for r in records]
    with_na = [{**r, "x2": pd.NA, "city": pd.NA, "rooms": pd.NA} for r in records]
    assert predictor.predict(with_na) == predictor.predict(with_none)
    frame = pd.DataFrame(records).astype({"rooms": "Int64"})
    frame.loc[0, "rooms"] = pd.NA
    assert predictor.predict(frame).iloc[0].to_dict() == predictor.predict(
        {**records[0], "rooms": None}
    )


def test_containers_that_do_not_hold_one_value_per_row_are_refused(
    trained: tuple[Predictor, pa.Table],
) -> None:
    predictor, rows = trained
    columns = {c: rows.column(c).to_numpy(zero_copy_only=False) for c in rows.column_names}
    with pytest.raises(SchemaError, match=r"column 'x1' must be one value per row.*\(50, 2\)"):
        predictor.predict({**columns, "x1": np.ones((50, 2))})
    doubled = rows.append_column("x1", rows.column("x1"))
    with pytest.raises(SchemaError, match=r"more than one column is named \['x1'\]"):
        predictor.predict(doubled)
    frame = rows.to_pandas()
    with pytest.raises(SchemaError, match=r"more than one column is named \['x1'\]"):
        predictor.predict(pd.concat([frame, frame[["x1"]]], axis=1))
    with pytest.raises(
        SchemaError, match="column 'x1' must hold numbers; got values of type string"
    ):
        predictor.predict(rows.set_column(0, "x1", pa.array(["1.5"] * 50)))


def test_a_dict_of_series_is_columns_not_one_row(trained: tuple[Predictor, pa.Table]) -> None:
    predictor, rows = trained
    out = predictor.predict(rows.to_pandas().to_dict("series"))
    assert len(out["label"]) == 50


def test_a_bare_name_is_a_model_even_beside_a_folder_of_that_name(
    trained: tuple[Predictor, pa.Table], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor, rows = trained
    home = predictor.bundle.path.parents[2]
    (tmp_path / "houses").mkdir()  # a data folder named like the model
    monkeypatch.chdir(tmp_path)
    with Registry(Settings(home=home)) as reg:
        assert tandem.load("houses", registry=reg).predict(rows).equals(predictor.predict(rows))
