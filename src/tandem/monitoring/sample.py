"""Drift tests that need rows rather than statistics: a uniform sample of the training columns,
kept in the Bundle beside the reference statistics of :mod:`tandem.monitoring.drift`, and the
two tests that run against it.

- :func:`ks_tests`: two-sample Kolmogorov–Smirnov per numeric column, the whole CDF rather
  than ten bins. Raw p-values: correct them together with the others
  (:func:`tandem.monitoring.drift.benjamini_hochberg`).
- :func:`domain_classifier`: the multivariate test. Per-column tests, these and drift's,
  cannot see a change in how columns move *together*: a correlation that flips from +0.8 to
  −0.8 keeps every marginal. A gradient-boosted classifier learns to tell reference rows
  from current rows (as many of each); its out-of-fold ROC AUC is 0.5 when it cannot.

**The verdict rule**, as in drift: a magnitude and a test. The magnitude is the AUC, the mean
of the folds' AUCs. The test: within a held-out fold the scores come from one model that never
saw those rows, so with no drift they are exchangeable between the two sides and the fold's
one-sided Mann–Whitney U (normal approximation, tie-corrected; the fold's AUC is U over the
product of its two row counts) is exact. The folds' models share training rows, which makes
their p-values dependent: one Mann–Whitney test of every out-of-fold score pooled, or the
folds' z added, gave p < 0.05 on 9.5 % of clean samples of 200 rows (200 seeds) and 8 % of
2000 rows (150 seeds), so the folds are combined by Bonferroni
(:data:`FOLDS` × the smallest p-value), which holds under any dependence. The data drifts when
the p-value is under :data:`ALPHA` *and* the AUC over :data:`AUC_THRESHOLD`: at 2000 rows a
side an AUC of 0.53 is already "significant"; on a few hundred rows a clean AUC reaches 0.6.

A Bundle that keeps a sample keeps that many training rows verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tandem.data.schema import MISSING_CATEGORY, ColumnSpec, coerce_column
from tandem.errors import BundleError, ConfigError, DataError

__all__ = [
    "ALPHA",
    "AUC_THRESHOLD",
    "DomainDrift",
    "domain_classifier",
    "ks_tests",
    "reference_sample",
    "sample_from_table",
    "sample_to_table",
]

#: AUC over which a significant domain classifier counts as drift. Measured on 20 columns
#: (14 numbers, 2 booleans, 4 categories), 2000 reference rows: clean, 2000 current rows, the
#: AUC read 0.473 to 0.523 (95th percentile 0.519, 100 seeds), p < 0.05 in 3 %; clean, 200
#: rows, up to 0.600 and p < 0.05 in 3.5 % (200 seeds), 3 % alarms under the rule. A
#: correlation of +0.8 turned to -0.8 read 0.84 to 0.88 (KS and drift flag neither column),
#: to 0 0.63 to 0.70, to +0.4 0.553 to 0.605 (0.6 caught 1 of 10 of these; 0.55 all); a
#: 0.5 sd mean shift of one column 0.60 to 0.63, 0.2 sd about 0.53 (drift's job, not this)
AUC_THRESHOLD = 0.55
#: p-value under which the domain classifier's AUC is significant
ALPHA = 0.05
#: the fewest values a test runs on: :func:`ks_tests` skips a column with fewer present values
#: on either side, :func:`domain_classifier` refuses fewer rows
MIN_ROWS = 20
#: folds of the domain classifier's out-of-fold scores
FOLDS = 5
#: columns :attr:`DomainDrift.top_features` lists
TOP_FEATURES = 5
# small on purpose: the whole test on 2 × 2000 rows × 20 columns takes 1 to 2 s on two busy cores
_BOOSTING = {"max_iter": 50, "learning_rate": 0.1, "max_leaf_nodes": 15, "early_stopping": False}
#: HistGradientBoostingClassifier takes category codes below its max_bins (255)
_MAX_CODES = 255


@dataclass(frozen=True)
class DomainDrift:
    """How well a classifier tells current rows from the reference sample.

    Attributes:
        auc: ROC AUC of "current" against "reference" on held-out rows, the mean over the
            folds; 0.5 when the two are indistinguishable.
        p_value: one-sided p-value of AUC > 0.5: each fold's Mann–Whitney U (normal
            approximation), Bonferroni-combined over the folds.
        rows_each: rows of each side the classifier saw.
        top_features: up to :data:`TOP_FEATURES` ``(column, importance)``, the most separating
            first; the importance is the drop in AUC when that column alone is shuffled.
    """

    auc: float
    p_value: float
    rows_each: int
    top_features: list[tuple[str, float]]

    @property
    def drifted(self) -> bool:
        return self.p_value < ALPHA and self.auc > AUC_THRESHOLD


def _rows(specs: Sequence[ColumnSpec], columns: Mapping[str, np.ndarray], what: str) -> int:
    """The row count of ``columns``, which must hold every spec's column, all of one length."""
    if not specs:
        raise DataError("no columns to compare: give at least one ColumnSpec")
    missing = [s.name for s in specs if s.name not in columns]
    if missing:
        raise DataError(
            f"{what} lacks the model's input column(s) {missing}: give every column of the "
            "model's signature, coerced with tandem.data.schema.coerce_column"
        )
    lengths = {s.name: len(columns[s.name]) for s in specs}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{what} has columns of different lengths {lengths}: one value per row")
    return next(iter(lengths.values()))


def _current(specs: Sequence[ColumnSpec], current: Mapping[str, np.ndarray]) -> int:
    n = _rows(specs, current, "the current data")
    if n == 0:
        raise DataError("the current data has no rows to compare")
    return n


def reference_sample(
    specs: Sequence[ColumnSpec],
    columns: Mapping[str, np.ndarray],
    *,
    rows: int = 2000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A uniform random sample, without replacement, of ``rows`` rows (all, when fewer).

    Args:
        specs: the model's input columns.
        columns: the coerced training columns (:func:`tandem.data.schema.coerce_column`),
            arrays of shape (n,): float64 with NaN, or str with ``MISSING_CATEGORY``.

    Returns:
        the same columns, shape (min(rows, n),), rows in random order.

    Example:
        >>> spec = ColumnSpec(name="x", kind="numeric")
        >>> reference_sample([spec], {"x": np.arange(10.0)}, rows=3)["x"].shape
        (3,)
    """
    if rows < 1:
        raise ConfigError(f"a reference sample needs at least one row; got rows={rows}")
    n = _rows(specs, columns, "the training data")
    index = np.random.default_rng(seed).choice(n, size=min(rows, n), replace=False)
    return {s.name: np.asarray(columns[s.name])[index] for s in specs}


def _arrow_type(spec: ColumnSpec) -> pa.DataType:
    return pa.string() if spec.kind == "categorical" else pa.float64()


def sample_to_table(specs: Sequence[ColumnSpec], sample: Mapping[str, np.ndarray]) -> pa.Table:
    """The sample as an Arrow table to store as Parquet: float64 and string columns, missing
    values (NaN, ``MISSING_CATEGORY``) as nulls."""
    _rows(specs, sample, "the reference sample")
    arrays = {}
    for s in specs:
        values = np.asarray(sample[s.name], dtype=object if s.kind == "categorical" else float)
        missing = values == MISSING_CATEGORY if s.kind == "categorical" else np.isnan(values)
        arrays[s.name] = pa.array(values, type=_arrow_type(s), mask=missing)
    return pa.table(arrays)


def sample_from_table(specs: Sequence[ColumnSpec], table: pa.Table) -> dict[str, np.ndarray]:
    """The sample :func:`sample_to_table` stored, coerced as training coerced it."""
    wrong = [
        f"{s.name} ({table.schema.field(s.name).type if s.name in table.column_names else 'absent'})"
        for s in specs
        if s.name not in table.column_names or table.schema.field(s.name).type != _arrow_type(s)
    ]
    if wrong:
        raise BundleError(
            f"the reference sample's column(s) {wrong} do not match the model's inputs "
            "(numbers as double, categories as string): the Bundle was altered; re-freeze it"
        )
    return {s.name: coerce_column(s, table.column(s.name)) for s in specs}


def ks_tests(
    specs: Sequence[ColumnSpec],
    sample: Mapping[str, np.ndarray],
    current: Mapping[str, np.ndarray],
) -> dict[str, tuple[float, float]]:
    """Two-sample Kolmogorov–Smirnov of each numeric column, missing values dropped.

    Booleans and categories are left to drift's chi-square tests; a column with fewer than
    :data:`MIN_ROWS` present values on either side is skipped.

    Returns:
        ``{column: (statistic, p_value)}``: the largest CDF gap (0 to 1) and its two-sided,
        uncorrected p-value.
    """
    from scipy.stats import ks_2samp

    _rows(specs, sample, "the reference sample")
    _current(specs, current)
    out = {}
    for s in specs:
        if s.kind != "numeric":
            continue
        a, b = (np.asarray(c[s.name], dtype=float) for c in (sample, current))
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        if min(a.size, b.size) >= MIN_ROWS:
            result = ks_2samp(a, b)
            out[s.name] = (float(result.statistic), float(result.pvalue))
    return out


def _codes(values: np.ndarray) -> np.ndarray:
    """Category strings as codes by frequency (0 the most frequent), missing as NaN; past
    :data:`_MAX_CODES` the rarest share the last code."""
    values = values.astype(str)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    rank = np.empty(counts.size, dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(counts.size)
    codes = np.minimum(rank, _MAX_CODES - 1)[inverse].astype(float)
    codes[values == MISSING_CATEGORY] = np.nan
    return codes


def _auc(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """AUC of the ``y == 1`` scores over the ``y == 0`` ones, and its one-sided p-value."""
    from scipy.stats import mannwhitneyu

    if np.ptp(scores) == 0:  # one score for every row: nothing separates, and U has no variance
        return 0.5, 1.0
    pos, neg = scores[y == 1], scores[y == 0]
    result = mannwhitneyu(pos, neg, alternative="greater", method="asymptotic")
    return float(result.statistic) / (pos.size * neg.size), float(result.pvalue)


def domain_classifier(
    specs: Sequence[ColumnSpec],
    sample: Mapping[str, np.ndarray],
    current: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    max_rows: int | None = None,
) -> DomainDrift:
    """How well a classifier tells ``current`` rows from the reference ``sample``.

    Both sides are subsampled to the same number of rows (the smaller side, at most
    ``max_rows``); a HistGradientBoostingClassifier (categories as categorical features,
    missing values native) scores every row out of fold, :data:`FOLDS` stratified folds.

    Args:
        specs: the model's input columns.
        sample: the reference sample (:func:`reference_sample`).
        current: the coerced current columns, arrays of shape (n,).
        max_rows: rows a side at most; None for the reference sample's size.

    Raises:
        DataError: ``current`` lacks a column, its columns differ in length, or either side
            has fewer than :data:`MIN_ROWS` rows.
        ConfigError: ``max_rows`` under :data:`MIN_ROWS`.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    if max_rows is not None and max_rows < MIN_ROWS:
        raise ConfigError(f"max_rows must be at least {MIN_ROWS}; got {max_rows}")
    n_ref = _rows(specs, sample, "the reference sample")
    n_cur = _current(specs, current)
    rows = min(n_ref, n_cur, n_ref if max_rows is None else max_rows)
    if rows < MIN_ROWS:
        raise DataError(
            f"the domain classifier needs at least {MIN_ROWS} rows a side; got {n_ref} "
            f"reference and {n_cur} current rows"
        )
    rng = np.random.default_rng(seed)
    ref_rows = rng.choice(n_ref, size=rows, replace=False)
    cur_rows = rng.choice(n_cur, size=rows, replace=False)
    X = np.empty((2 * rows, len(specs)))
    for j, s in enumerate(specs):
        both = np.concatenate(
            [np.asarray(sample[s.name])[ref_rows], np.asarray(current[s.name])[cur_rows]]
        )
        X[:, j] = _codes(both) if s.kind == "categorical" else both
    y = np.repeat([0, 1], rows)
    categorical = np.array([s.kind == "categorical" for s in specs])

    k = len(specs)
    aucs, p_values, drops = [], [], np.zeros(k)
    # one OpenMP thread: a few thousand rows split too fast to share, and on a busy machine
    # the boosting's per-node thread barriers made it 7 to 13 times slower (2 cores, load 4)
    with threadpool_limits(1, user_api="openmp"):
        for train, test in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(X, y):
            model = HistGradientBoostingClassifier(
                **_BOOSTING, categorical_features=categorical, random_state=seed
            ).fit(X[train], y[train])
            auc, p_value = _auc(model.predict_proba(X[test])[:, 1], y[test])
            aucs.append(auc)
            p_values.append(p_value)
            # each column shuffled in its own copy, all scored in one call, not one a column
            shuffled = np.tile(X[test], (k, 1, 1))
            for j in range(k):
                shuffled[j, :, j] = rng.permutation(shuffled[j, :, j])
            flat = model.predict_proba(shuffled.reshape(-1, k))[:, 1].reshape(k, -1)
            drops += [auc - _auc(column, y[test])[0] for column in flat]
    importance = [(s.name, float(d) / FOLDS) for s, d in zip(specs, drops, strict=True)]
    importance.sort(key=lambda item: -item[1])
    return DomainDrift(
        auc=float(np.mean(aucs)),
        # Bonferroni: the folds' p-values are dependent (see the module docstring)
        p_value=min(1.0, FOLDS * min(p_values)),
        rows_each=rows,
        top_features=importance[:TOP_FEATURES],
    )
