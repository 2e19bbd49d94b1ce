"""Drift against reference statistics: false alarms stay rare on clean samples, the shifts the
issue names are found at 100k rows and the drifted columns named, p-values are corrected."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem.data.profile import profile_columns
from tandem.data.schema import ColumnSpec
from tandem.monitoring.drift import benjamini_hochberg, drift

CITIES = np.array(["paris", "lyon", "nice", "lille", "brest"])
WEIGHTS = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
SPECS = [
    *(ColumnSpec(name=f"x{i}", kind="numeric") for i in range(4)),
    ColumnSpec(name="city", kind="categorical", categories=tuple(CITIES)),
]


def sample(n: int, rng: np.random.Generator, **shift: float) -> dict[str, np.ndarray]:
    cols = {f"x{i}": rng.normal(size=n) for i in range(4)}
    cols["x1"] = rng.exponential(size=n)  # a skewed column too
    cols["x0"] = cols["x0"] * shift.get("scale", 1.0) + shift.get("mean", 0.0)
    cols["x2"][rng.random(n) < 0.05] = np.nan  # 5 % missing
    weights = WEIGHTS.copy()
    if shift.get("reweight"):
        weights = np.array([0.3, 0.3, 0.2, 0.12, 0.08])
    cols["city"] = rng.choice(CITIES, size=n, p=weights)
    return cols


REFERENCE = profile_columns(SPECS, sample(20_000, np.random.default_rng(0)))


def test_clean_samples_raise_few_false_alarms() -> None:
    rng = np.random.default_rng(1)
    alarms = sum(drift(REFERENCE, sample(100_000, rng)).drifted for _ in range(40))
    assert alarms <= 2  # <= 5 % at the dataset level


def test_the_named_shifts_are_found_and_named() -> None:
    rng = np.random.default_rng(2)
    for shift, column in (({"mean": 0.2}, "x0"), ({"scale": 1.3}, "x0"), ({"reweight": 1}, "city")):
        found = [drift(REFERENCE, sample(100_000, rng, **shift)) for _ in range(5)]
        assert all(column in d.drifted_columns for d in found), (shift, found[0])
        assert all(d.drifted_columns == [column] for d in found)


def test_a_small_shift_is_not_drift_however_large_the_sample() -> None:
    # 0.03 sd at 1M rows is "significant" and harmless: the magnitude rule keeps it quiet
    report = drift(REFERENCE, sample(1_000_000, np.random.default_rng(3), mean=0.03))
    x0 = next(c for c in report.columns if c.column == "x0")
    assert x0.statistic < x0.threshold and not report.drifted


def test_a_missing_rate_jump_is_drift() -> None:
    cur = sample(50_000, np.random.default_rng(4))
    cur["x2"][:10_000] = np.nan  # 5 % -> ~24 % missing
    report = drift(REFERENCE, cur)
    assert report.drifted_columns == ["x2"]


def test_unseen_categories_count_against_the_reference() -> None:
    cur = sample(50_000, np.random.default_rng(5))
    cur["city"][:15_000] = "toulouse"
    report = drift(REFERENCE, cur)
    assert "city" in report.drifted_columns


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40))
def test_benjamini_hochberg_is_monotone_and_never_below_the_raw(p: list[float]) -> None:
    adjusted = benjamini_hochberg(p)
    assert all(a >= r - 1e-12 and a <= 1 for a, r in zip(adjusted, p, strict=True))
    order = np.argsort(p)
    ranked = [adjusted[i] for i in order]
    assert all(x <= y + 1e-12 for x, y in itertools.pairwise(ranked))


def test_a_constant_reference_column_flags_new_values() -> None:
    from tandem.data.profile import column_profile

    spec = ColumnSpec(name="flag", kind="numeric")
    reference = {"flag": column_profile(spec, np.ones(5000))}
    same = drift(reference, {"flag": np.ones(3000)})
    assert not same.drifted
    changed = np.ones(3000)
    changed[:600] = 2.0  # a fifth of the values are new
    result = drift(reference, {"flag": changed})
    assert result.drifted_columns == ["flag"]
    assert result.columns[0].statistic == pytest.approx(0.2)


def test_a_flag_column_is_compared_by_its_shares() -> None:
    """0/1 columns have no decile edges between their two values; the shares still count."""
    from tandem.data.profile import column_profile

    rng = np.random.default_rng(4)
    spec = ColumnSpec(name="garden", kind="boolean")
    reference = {"garden": column_profile(spec, (rng.random(5000) < 0.3).astype(float))}
    assert not drift(reference, {"garden": (rng.random(20000) < 0.3).astype(float)}).drifted
    moved = drift(reference, {"garden": (rng.random(20000) < 0.4).astype(float)})
    assert moved.drifted_columns == ["garden"]
    assert moved.columns[0].statistic == pytest.approx(0.1, abs=0.02)
