"""The reference sample and the tests that run on it: the sample is uniform and survives
Parquet; KS finds a shifted column; the domain classifier stays under its threshold on clean
data and catches a correlation flip that every per-column test misses."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare, kstest

from tandem.data.profile import profile_columns
from tandem.data.schema import MISSING_CATEGORY, ColumnSpec
from tandem.errors import BundleError, DataError
from tandem.monitoring.drift import drift
from tandem.monitoring.sample import (
    AUC_THRESHOLD,
    domain_classifier,
    ks_tests,
    reference_sample,
    sample_from_table,
    sample_to_table,
)
from tests.helpers import ROOT

CITIES = np.array(["paris", "lyon", "nice", "lille"])
SPECS = [
    *(ColumnSpec(name=f"x{i}", kind="numeric") for i in range(4)),
    ColumnSpec(name="garden", kind="boolean"),
    ColumnSpec(name="city", kind="categorical", categories=tuple(CITIES)),
]


def data(n: int, rng: np.random.Generator, *, rho: float = 0.8, mean: float = 0.0) -> dict:
    """x0 and x1 standard normals with correlation ``rho``; x2 shifted by ``mean``."""
    z = rng.normal(size=(n, 2))
    x3 = rng.exponential(size=n)
    x3[rng.random(n) < 0.1] = np.nan
    city = rng.choice(CITIES, size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    city[rng.random(n) < 0.05] = MISSING_CATEGORY
    return {
        "x0": z[:, 0],
        "x1": rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1],
        "x2": rng.normal(size=n) + mean,
        "x3": x3,
        "garden": (rng.random(n) < 0.3).astype(float),
        "city": city,
    }


TRAIN = data(10_000, np.random.default_rng(0))
REFERENCE = reference_sample(SPECS, TRAIN, rows=1000, seed=0)


def test_the_sample_is_uniform_without_replacement_and_keeps_rows_whole() -> None:
    n = 10_000
    columns = {"x0": np.arange(n, dtype=float), "city": np.arange(n).astype(str).astype(object)}
    specs = [SPECS[0], SPECS[-1]]
    sample = reference_sample(specs, columns, rows=2000, seed=1)
    assert np.unique(sample["x0"]).size == 2000
    assert sample["x0"].dtype == np.float64
    assert [str(int(v)) for v in sample["x0"]] == list(sample["city"])
    assert kstest(sample["x0"] / n, "uniform").pvalue > 0.01
    assert np.array_equal(reference_sample(specs, columns, rows=2000, seed=1)["x0"], sample["x0"])
    assert not np.array_equal(
        reference_sample(specs, columns, rows=2000, seed=2)["x0"], sample["x0"]
    )
    # every row equally likely: 10 of 50 rows, 300 times, each row picked about 60 times
    small = {"x0": np.arange(50.0)}
    picks = np.concatenate(
        [reference_sample(specs[:1], small, rows=10, seed=s)["x0"] for s in range(300)]
    )
    assert chisquare(np.bincount(picks.astype(int), minlength=50)).pvalue > 0.001
    assert sorted(reference_sample(specs[:1], small, rows=80)["x0"]) == list(range(50))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(allow_infinity=False),
            st.one_of(st.just(MISSING_CATEGORY), st.text(max_size=6)),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_the_sample_survives_parquet(rows: list[tuple[float, str]]) -> None:
    specs = [SPECS[0], SPECS[-1]]
    sample = {
        "x0": np.array([r[0] for r in rows], dtype=float),
        "city": np.array([r[1] for r in rows], dtype=object),
    }
    table = sample_to_table(specs, sample)
    assert table.schema.types == [pa.float64(), pa.string()]
    assert table.column("x0").null_count == np.isnan(sample["x0"]).sum()
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    back = sample_from_table(specs, pq.read_table(io.BytesIO(buffer.getvalue())))
    np.testing.assert_array_equal(back["x0"], sample["x0"])  # NaN where NaN was
    assert list(back["city"]) == list(sample["city"])


def test_a_table_that_does_not_match_the_inputs_is_refused() -> None:
    table = pa.table({"x0": ["1.5"], "city": ["paris"]})
    with pytest.raises(BundleError, match=r"x0 \(string\)"):
        sample_from_table([SPECS[0], SPECS[-1]], table)
    with pytest.raises(BundleError, match=r"x1 \(absent\)"):
        sample_from_table([SPECS[1]], table)


def test_ks_finds_the_shifted_column_and_only_it() -> None:
    current = data(3000, np.random.default_rng(1), mean=0.3)
    current["x3"][20:] = np.nan  # 18 or so present values: too few to test
    result = ks_tests(SPECS, REFERENCE, current)
    assert set(result) == {"x0", "x1", "x2"}  # numbers only, and x3 skipped
    assert result["x2"][1] < 1e-6 and result["x2"][0] > 0.08
    assert result["x0"][1] > 0.05 and result["x1"][1] > 0.05


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_clean_data_stays_under_the_threshold(seed: int) -> None:
    result = domain_classifier(SPECS, REFERENCE, data(2000, np.random.default_rng(seed)), seed=seed)
    assert result.rows_each == 1000
    assert result.auc < AUC_THRESHOLD and not result.drifted, result


def test_a_correlation_flip_escapes_column_tests_but_not_the_classifier() -> None:
    current = data(2000, np.random.default_rng(4), rho=-0.8)
    ks = ks_tests(SPECS, REFERENCE, current)
    assert ks["x0"][1] > 0.05 and ks["x1"][1] > 0.05
    assert {"x0", "x1"}.isdisjoint(drift(profile_columns(SPECS, TRAIN), current).drifted_columns)
    result = domain_classifier(SPECS, REFERENCE, current, max_rows=800)
    assert result.rows_each == 800
    assert result.auc > AUC_THRESHOLD + 0.15 and result.p_value < 1e-9 and result.drifted
    assert {name for name, _ in result.top_features[:2]} == {"x0", "x1"}
    assert result.top_features[1][1] > 5 * max(abs(v) for _, v in result.top_features[2:])


def test_bad_current_data_is_named() -> None:
    empty = {name: values[:0] for name, values in REFERENCE.items()}
    with pytest.raises(DataError, match="no rows"):
        domain_classifier(SPECS, REFERENCE, empty)
    lacking = {name: values for name, values in REFERENCE.items() if name != "x1"}
    for test in (domain_classifier, ks_tests):
        with pytest.raises(DataError, match=r"current data lacks .*\['x1'\]"):
            test(SPECS, REFERENCE, lacking)
    few = {name: values[:10] for name, values in REFERENCE.items()}
    with pytest.raises(DataError, match="at least 20 rows a side; got 1000 reference and 10"):
        domain_classifier(SPECS, REFERENCE, few)
    ragged = {**REFERENCE, "x0": REFERENCE["x0"][:5]}
    with pytest.raises(DataError, match="different lengths"):
        ks_tests(SPECS, REFERENCE, ragged)


def test_importing_the_module_leaves_scikit_learn_and_scipy_out() -> None:
    code = "import sys, tandem.monitoring.sample; print(sorted({'sklearn', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    assert out.stdout.strip() == "[]"
