from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem.data.split import MIN_ROWS, kfold_indices, split_indices
from tandem.errors import DataError


@given(
    n=st.integers(MIN_ROWS, 3000),
    seed=st.integers(0, 2**31),
    k=st.integers(1, 6),
    stratify=st.booleans(),
)
def test_splits_partition_the_rows(n: int, seed: int, k: int, stratify: bool) -> None:
    labels = np.random.default_rng(seed).integers(0, k, size=n) if stratify else None
    s = split_indices(n, labels=labels, seed=seed)
    everything = np.concatenate([s.train, s.validation, s.test])
    assert np.array_equal(np.sort(everything), np.arange(n))  # disjoint and complete
    assert len(s.train) >= len(s.validation) and len(s.train) >= len(s.test)
    again = split_indices(n, labels=labels, seed=seed)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            (s.train, s.validation, s.test),
            (again.train, again.validation, again.test),
            strict=True,
        )
    )
    if labels is not None:
        # every class present in the data reaches training
        assert set(np.unique(labels[s.train])) == set(np.unique(labels))


@given(seed=st.integers(0, 2**31))
def test_stratified_splits_keep_class_shares(seed: int) -> None:
    labels = np.array([0] * 900 + [1] * 100)
    s = split_indices(1000, labels=labels, seed=seed)
    for part in (s.train, s.validation, s.test):
        assert abs(labels[part].mean() - 0.1) < 0.01


def test_too_few_rows_and_bad_fractions() -> None:
    with pytest.raises(DataError, match="at least"):
        split_indices(MIN_ROWS - 1)
    with pytest.raises(DataError, match="sum to 1"):
        split_indices(100, fractions=(0.5, 0.2, 0.2))


@given(
    n=st.integers(MIN_ROWS, 2000),
    k=st.integers(2, 10),
    seed=st.integers(0, 2**31),
    classes=st.integers(1, 5),
)
def test_kfold_partitions_rows_into_balanced_folds(n: int, k: int, seed: int, classes: int) -> None:
    labels = np.random.default_rng(seed).integers(0, classes, size=n)
    folds = kfold_indices(n, k=k, labels=labels, seed=seed)
    assert len(folds) == k
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(n))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in np.unique(labels):
        per_fold = [int(np.sum(labels[f] == c)) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1
        assert sum(per_fold) == int(np.sum(labels == c))
