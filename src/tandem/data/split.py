"""Seeded, reproducible train / validation / test splits, stratified for classification."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tandem.errors import DataError

__all__ = ["MIN_ROWS", "Split", "kfold_indices", "split_indices"]

#: fewer rows than this cannot give three usable splits
MIN_ROWS = 20


@dataclass(frozen=True)
class Split:
    """Row indices of the three splits; disjoint, together every row exactly once."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def _counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    return n_val, n_test


def split_indices(
    n_rows: int,
    *,
    labels: np.ndarray | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> Split:
    """Shuffle ``range(n_rows)`` into train / validation / test.

    Args:
        n_rows: number of rows.
        labels: class labels of shape (n_rows,) to stratify by, or None.
        fractions: shares of train, validation and test; they must sum to 1.
        seed: the same seed and inputs always give the same split.

    With ``labels``, each class is split in the same proportions (a class too small to reach
    every split keeps its rows in train first), so rare classes are never lost from training.

    Example:
        >>> s = split_indices(100, seed=1)
        >>> len(s.train), len(s.validation), len(s.test)
        (70, 15, 15)
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise DataError(f"split fractions must be positive and sum to 1; got {fractions}")
    if n_rows < MIN_ROWS:
        raise DataError(f"the data has {n_rows} usable rows; training needs at least {MIN_ROWS}")
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n_rows)
        n_val, n_test = _counts(n_rows, fractions)
        n_train = n_rows - n_val - n_test
        return Split(order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    parts: list[list[np.ndarray]] = [[], [], []]
    _, inverse = np.unique(labels, return_inverse=True)
    for cls in range(int(inverse.max()) + 1):
        members = rng.permutation(np.flatnonzero(inverse == cls))
        n_val, n_test = _counts(len(members), fractions)
        n_train = max(len(members) - n_val - n_test, 1)
        n_val = min(n_val, len(members) - n_train)
        parts[0].append(members[:n_train])
        parts[1].append(members[n_train : n_train + n_val])
        parts[2].append(members[n_train + n_val :])
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    if len(val) == 0 or len(test) == 0:
        raise DataError(
            f"the target has {len(np.unique(inverse))} classes in {n_rows} rows, too few rows per class to "
            "fill training, validation and test: give more rows per class, or use --task regression if "
            "the target is a measurement"
        )
    return Split(train, val, test)


def kfold_indices(
    n_rows: int, *, k: int, labels: np.ndarray | None = None, seed: int = 0
) -> list[np.ndarray]:
    """Shuffle ``range(n_rows)`` into ``k`` folds of near-equal size, each class spread evenly.

    Example:
        >>> [len(f) for f in kfold_indices(10, k=3)]
        [4, 3, 3]
    """
    if not 2 <= k <= n_rows:
        raise DataError(f"cross-validation needs 2 <= k <= {n_rows} rows; got k={k}")
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n_rows)
    else:
        # class by class, so dealing rows round-robin gives every fold its share of each class
        _, inverse = np.unique(labels, return_inverse=True)
        order = np.concatenate(
            [rng.permutation(np.flatnonzero(inverse == c)) for c in range(int(inverse.max()) + 1)]
        )
    folds = [order[i::k] for i in range(k)]
    return [np.sort(f) for f in folds]
