"""Realized performance: windows partition the labelled rows, their metrics are
scikit-learn's, durations parse or are refused by name, and an injected decay is found after
it happens and not before."""

from __future__ import annotations

import itertools
import math
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error, roc_auc_score

from tandem.errors import DataError, UsageError
from tandem.monitoring.detectors import PageHinkley
from tandem.monitoring.performance import decay, error_stream, parse_duration, windows

START = np.datetime64("2024-03-04T00:00", "us")
DAY = np.timedelta64(1, "D").astype("timedelta64[us]")


def spread(rng: np.random.Generator, rows: int, days: float) -> np.ndarray:
    """``rows`` random times over ``days`` from START, unsorted, as the log may hold them."""
    return START + (rng.random(rows) * days * DAY.astype(np.int64)).astype("timedelta64[us]")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("6h", timedelta(hours=6)),
        ("24h", timedelta(days=1)),
        ("1d", timedelta(days=1)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(days=14)),
    ],
)
def test_durations_are_read(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "6", "h", "0d", "06h", "1.5h", "-1d", "1 day", " 6h", "15M", "1mo", "6hh"]
)
def test_other_durations_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(UsageError, match=r"as a duration.*'15m', '6h', '7d'"):
        parse_duration(text)


def test_a_duration_too_long_to_represent_is_refused() -> None:
    with pytest.raises(UsageError, match="longer than"):
        parse_duration("9999999999d")


@settings(max_examples=60, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 20 * 86_400_000_000), min_size=0, max_size=80),
    labelled=st.lists(st.booleans(), min_size=80, max_size=80),
    every=st.sampled_from(["15m", "6h", "1d", "7d", timedelta(hours=5)]),
)
def test_windows_partition_the_labelled_rows(
    offsets: list[int], labelled: list[bool], every: str | timedelta
) -> None:
    times = START + np.array(offsets, dtype="timedelta64[us]")
    truth = np.where(labelled[: len(offsets)], 1.0, np.nan)
    found = windows(times, truth, np.ones(len(offsets)), task="regression", every=every)
    kept = times[~np.isnan(truth)]
    assert sum(w.rows for w in found) == kept.size
    step = np.timedelta64(parse_duration(every) if isinstance(every, str) else every, "us")
    for w in found:
        assert w.end - w.start == step and w.rows > 0
        assert w.rows == np.count_nonzero((kept >= w.start) & (kept < w.end))
        assert (w.start - kept.min().astype("datetime64[D]")) % step == np.timedelta64(0)
    assert all(a.end <= b.start for a, b in itertools.pairwise(found))


def test_classification_metrics_are_sklearns_per_window() -> None:
    rng = np.random.default_rng(0)
    times = spread(rng, 3000, 10)
    truth = rng.choice(["no", "yes"], size=3000).astype(object)
    proba = np.clip(np.where(truth == "yes", 0.6, 0.4) + rng.normal(scale=0.3, size=3000), 0, 1)
    predicted = np.where(proba > 0.5, "yes", "no")
    truth[:300] = None  # not labelled yet
    labelled = np.arange(3000) >= 300
    found = windows(times, truth, predicted, task="classification", every="1d", proba=proba)
    assert len(found) == 10 and sum(w.rows for w in found) == 2700
    for w in found:
        inside = (times >= w.start) & (times < w.end) & labelled
        t, p = truth[inside].astype(str), predicted[inside]
        assert w.metrics["accuracy"] == pytest.approx(accuracy_score(t, p))
        assert w.metrics["roc_auc"] == pytest.approx(roc_auc_score(t == "yes", proba[inside]))
    # both columns, in the order of classes, read the same
    both = np.column_stack([1 - proba, proba])
    again = windows(times, truth, predicted, task="classification", every="1d", proba=both)
    assert again == found


def test_roc_auc_is_left_out_where_one_class_is_missing() -> None:
    times = START + np.arange(4) * (DAY // 2)
    truth = np.array([0, 1, 1, 1])  # the second day holds only positives
    found = windows(times, truth, truth, task="classification", every="1d", proba=np.full(4, 0.7))
    assert [sorted(w.metrics) for w in found] == [["accuracy", "roc_auc"], ["accuracy"]]


def test_regression_metrics_are_sklearns_per_window() -> None:
    rng = np.random.default_rng(1)
    times = spread(rng, 2000, 2)
    truth = rng.normal(size=2000)
    predicted = truth + rng.normal(scale=0.5, size=2000)
    truth[::7] = np.nan
    for w in windows(times, truth, predicted, task="regression", every="6h"):
        inside = (times >= w.start) & (times < w.end) & ~np.isnan(truth)
        assert w.rows == inside.sum()
        assert w.metrics["mae"] == pytest.approx(
            mean_absolute_error(truth[inside], predicted[inside])
        )
        rmse = math.sqrt(mean_squared_error(truth[inside], predicted[inside]))
        assert w.metrics["rmse"] == pytest.approx(rmse)


def test_the_error_stream_is_in_time_order() -> None:
    times = START + np.array([3, 1, 2], dtype="timedelta64[h]")
    ordered, errs = error_stream(
        times, np.array([1.0, 2.0, np.nan]), np.zeros(3), task="regression"
    )
    assert ordered.tolist() == sorted(times[:2].tolist()) and errs.tolist() == [2.0, 1.0]


def decaying(seed: int, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two weeks of ~300 labelled rows a day; from day 7 on, the model's errors grow (accuracy
    90 % → 70 %, or a regression's error sd 1 → 2)."""
    rng = np.random.default_rng(seed)
    times = np.sort(spread(rng, 4200, 14))
    late = times >= START + 7 * DAY
    truth = rng.normal(size=times.size)
    if task == "classification":
        wrong = rng.random(times.size) < np.where(late, 0.3, 0.1)
        return times, truth > 0, np.where(wrong, truth <= 0, truth > 0)
    return times, truth, truth + rng.normal(size=times.size) * np.where(late, 2, 1)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_an_injected_decay_is_alarmed_after_it_starts_and_within_a_day(task: str) -> None:
    change = START + 7 * DAY
    for seed in range(5):
        times, truth, predicted = decaying(seed, task)
        found = decay(times, truth, predicted, task=task)  # type: ignore[arg-type]
        assert found is not None and change <= found < change + DAY, (seed, found)
        # the same rows without the decay: no alarm
        steady = times < change
        assert decay(times[steady], truth[steady], predicted[steady], task=task) is None  # type: ignore[arg-type]


def test_decay_runs_the_detector_it_is_given() -> None:
    times, truth, predicted = decaying(0, "classification")
    found = decay(times, truth, predicted, task="classification", detector=PageHinkley)
    assert found is not None and START + 7 * DAY <= found < START + 8 * DAY


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"times": np.arange(3)}, DataError, "datetime64"),
        ({"predicted": np.zeros(2)}, DataError, "one per row"),
        (
            {"times": np.array(["2024-01-01", "NaT", "2024-01-02"], dtype="datetime64[us]")},
            DataError,
            "NaT",
        ),
        ({"predicted": np.array([1.0, np.nan, 1.0])}, DataError, "no prediction"),
        ({"predicted": np.array(["a", "b", "c"])}, DataError, "must be numbers"),
        ({"every": "1 day"}, UsageError, "as a duration"),
        ({"every": timedelta(0)}, UsageError, "positive duration"),
        ({"proba": np.zeros(3)}, UsageError, "proba=None for a regression"),
        ({"task": "ranking"}, UsageError, "'classification' or 'regression'"),
        (
            {"task": "classification", "y_true": np.array(["1", "0", "1"])},
            DataError,
            "none can match",
        ),
        ({"task": "classification", "proba": np.zeros((3, 3))}, DataError, "binary models"),
        (
            {"task": "classification", "proba": np.zeros(3), "classes": [0, 1, 2]},
            DataError,
            "two classes",
        ),
    ],
)
def test_unusable_input_is_refused_with_a_reason(
    change: dict[str, object], error: type[Exception], match: str
) -> None:
    args: dict[str, object] = {
        "times": START + np.arange(3) * DAY,
        "y_true": np.array([1.0, 0.0, 1.0]),
        "predicted": np.array([1.0, 1.0, 1.0]),
        "task": "regression",
        "every": "1d",
        **change,
    }
    with pytest.raises(error, match=match):
        windows(**args)  # type: ignore[arg-type]
