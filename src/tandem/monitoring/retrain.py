"""``tandem retrain``: the champion's recipe on fresh data, and a promotion only on evidence.

1. The champion (``NAME@champion``) is the version to beat; its Bundle holds the recipe it was
   trained with (target, task, model family, settings, seed, ignored columns).
2. The fresh labeled rows are split in time order (file order): the most recent share is the
   **holdout**, which neither model has seen; the rest (with the champion's own training data
   when ``with_old`` and it is still where it was read from) trains the **challenger**, which
   is registered with the champion as its parent.
3. Both are run from their frozen Bundles on the holdout, and the difference of the primary
   metric (accuracy; R² for regression) gets a **paired bootstrap** confidence interval: the
   same resampled rows score both models, so what they share cancels out.
4. The alias moves only when the challenger is better **beyond the interval** (its lower bound
   is above 0) and ``promote`` was asked for. Either way the decision, with its evidence (both
   models' metrics on the holdout, the interval, what triggered it), is stored in the registry
   in the same transaction as the alias move; ``tandem models show`` lists it.

A server following ``NAME@champion`` picks the new version up without failing a request
(:mod:`tandem.serving.models`); rolling back is ``tandem promote NAME:V``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tandem.data.readers import read_table
from tandem.data.schema import SUPERVISED
from tandem.errors import DataError, NotFoundError
from tandem.registry import Decision, ModelVersion, Registry

__all__ = ["RetrainResult", "paired_bootstrap", "retrain", "training_rows_from_log"]

#: the fewest holdout rows a decision is made on
MIN_HOLDOUT = 30


@dataclass(frozen=True)
class RetrainResult:
    champion: ModelVersion
    challenger: ModelVersion
    metric: str
    champion_metrics: dict[str, float]
    challenger_metrics: dict[str, float]
    difference: float
    interval: tuple[float, float]
    confidence: float
    better: bool
    decision: Decision
    holdout_rows: int
    train_rows: int

    @property
    def promoted(self) -> bool:
        return self.decision.promoted

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.champion.name,
            "champion": self.champion.version,
            "challenger": self.challenger.version,
            "metric": self.metric,
            "champion_metrics": self.champion_metrics,
            "challenger_metrics": self.challenger_metrics,
            "difference": self.difference,
            "interval": list(self.interval),
            "confidence": self.confidence,
            "better": self.better,
            "promoted": self.promoted,
            "alias": self.decision.alias,
            "reason": self.decision.reason,
            "holdout_rows": self.holdout_rows,
            "train_rows": self.train_rows,
        }


def paired_bootstrap(
    metric: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of a paired difference over ``resamples`` resamplings of ``n`` rows.

    ``metric(idx)`` gets a (b, n) matrix of row indices (b resamples at a time) and returns the
    difference (challenger - champion) for each resample, shape (b,).

    Example:
        >>> d = np.r_[np.ones(60), np.zeros(40)]  # the challenger right on 60 rows more
        >>> lo, hi = paired_bootstrap(lambda idx: d[idx].mean(axis=1), 100)
        >>> 0.45 < lo < 0.6 < hi < 0.75
        True
    """
    rng = np.random.default_rng(seed)
    values = []
    step = max(1, min(resamples, 2_000_000 // max(n, 1)))  # bounded memory: b × n indices
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        values.append(metric(rng.integers(0, n, size=(b, n))))
    all_ = np.concatenate(values)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(all_, tail)), float(np.percentile(all_, 100 - tail))


def _difference_fn(
    task: str, y: np.ndarray, champion: np.ndarray, challenger: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    if task == "classification":  # accuracy: per-row correctness, paired
        d = (challenger == y).astype(float) - (champion == y).astype(float)
        return lambda idx: d[idx].mean(axis=1)

    def r2(pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
        yy = y[idx]
        ss_res = ((yy - pred[idx]) ** 2).sum(axis=1)
        ss_tot = ((yy - yy.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        return np.asarray(1 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan))

    return lambda idx: r2(challenger, idx) - r2(champion, idx)


def _scores(registry: Registry, version: ModelVersion, holdout: pa.Table, task: str) -> np.ndarray:
    """Predicted labels (classification) or values, from the frozen Bundle."""
    from tandem.inference import load

    predicted = load(version.ref, registry=registry).predict(holdout)
    column = "label" if task == "classification" else "prediction"
    return np.asarray(
        predicted.column(column).to_pylist(), dtype=object if task == "classification" else float
    )


def _metrics(task: str, y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy of predicted labels (the two models may know different classes, so labels,
    not probabilities, are compared); training's metrics of a regression."""
    if task == "classification":
        return {"accuracy": float(np.mean(predicted == y))}
    from tandem.training.metrics import score

    return score("regression", y, predicted)


def _fresh(data: Sequence[str | Path] | pa.Table) -> tuple[pa.Table, list[str]]:
    if isinstance(data, pa.Table):
        return data, ["labeled rows from the prediction log"]
    if not data:
        raise DataError("give the fresh labeled data: --data FILE (repeat for more)")
    tables = [read_table(p) for p in data]
    try:
        return pa.concat_tables(tables, promote_options="permissive"), [str(p) for p in data]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"the --data files have incompatible columns: {exc}") from None


def retrain(
    registry: Registry,
    name: str,
    data: Sequence[str | Path] | pa.Table,
    *,
    alias: str = "champion",
    promote: bool = False,
    holdout: float = 0.25,
    with_old: bool = False,
    confidence: float = 0.95,
    resamples: int = 2000,
    evidence: Mapping[str, Any] | None = None,
    on_progress: Callable[[Any], None] | None = None,
) -> RetrainResult:
    """Retrain ``name@alias`` on ``data`` and decide (see the module docstring).

    Args:
        data: files of fresh labeled rows, oldest first, or a table of them.
        holdout: the most recent share of ``data`` kept to judge both models.
        with_old: also train on the champion's own training data (read again from where it was).
        evidence: more to store with the decision (the drift report that triggered it).

    Raises:
        NotFoundError: ``name@alias`` does not exist.
        DataError: the data lacks the target or the champion's inputs, or is too small.
    """
    from tandem.bundle import load_bundle
    from tandem.training.train import train

    if not 0 < holdout < 1:
        raise DataError(f"holdout must be a share between 0 and 1; got {holdout}")
    if not 0 < confidence < 1:
        raise DataError(f"confidence must be between 0 and 1; got {confidence}")
    registry.list_versions(name)  # an unknown model is named as such, before any alias
    try:
        champion = registry.get(f"{name}@{alias}")
    except NotFoundError:
        raise NotFoundError(
            f"{name}@{alias} does not exist: there is no champion to retrain and compare with; "
            f"promote a version first (tandem promote {name}:VERSION --alias {alias})"
        ) from None
    manifest = load_bundle(champion.path, expected_digest=champion.digest).manifest
    recipe = manifest.details.get("recipe")
    if manifest.task not in SUPERVISED:
        raise DataError(
            f"{champion.ref} is a {manifest.task} model: retrain decides on labeled rows, which "
            f"it has none of; train a new version on fresh rows (tandem train FILE --name "
            f"{name}) and promote it if its metrics suit you"
        )
    if not recipe:
        raise DataError(f"{champion.ref} keeps no recipe: it cannot be retrained as it was trained")
    target = recipe["target"]
    table, sources = _fresh(data)
    missing = [
        c for c in [target, *(s.name for s in manifest.inputs)] if c not in table.column_names
    ]
    if missing:
        raise DataError(
            f"the fresh data lacks column(s) {missing} that {champion.ref} was trained with: "
            "give rows with the model's inputs and its target"
        )
    n = table.num_rows
    cut = n - round(n * holdout)
    if n - cut < MIN_HOLDOUT or cut < MIN_HOLDOUT:
        raise DataError(
            f"{n} fresh rows are too few: the holdout ({n - cut}) and the training part ({cut}) "
            f"need at least {MIN_HOLDOUT} rows each"
        )
    recent = table.slice(cut)
    y_raw = recent.column(target).to_pylist()
    keep = [i for i, v in enumerate(y_raw) if v is not None and v == v]  # labeled rows only
    recent = recent.take(pa.array(keep, pa.int64()))
    training = table.slice(0, cut)
    if with_old:
        source = manifest.details.get("data", {}).get("source", "")
        if not source or not Path(source).exists():
            raise DataError(
                f"{champion.ref} was trained on '{source or 'data passed in memory'}', which is "
                "not there any more: retrain without --with-old, or add those rows to --data"
            )
        old = read_table(source)
        training = pa.concat_tables([old, training], promote_options="permissive")
        sources = [source, *sources]
    result = train(
        training, target=target, name=name, task=recipe["task"], model=recipe["model"],
        time_budget=recipe.get("time_budget"), seed=recipe.get("seed", 0),
        ignore=[c for c in recipe.get("ignore", ()) if c in training.column_names],
        params=recipe.get("params") or None, registry=registry,
        parent=champion.version, on_progress=on_progress,
        description=f"retrained from {champion.ref} on {', '.join(sources)}",
    )  # fmt: skip
    challenger = result.version
    task = recipe["task"]
    if task == "classification":
        by_text = {str(c): c for c in manifest.classes}
        y = np.asarray(
            [by_text.get(str(v), v) for v in recent.column(target).to_pylist()], dtype=object
        )
    else:
        y = np.asarray(recent.column(target).to_pylist(), dtype=float)
    old_pred = _scores(registry, champion, recent, task)
    new_pred = _scores(registry, challenger, recent, task)
    metric = "accuracy" if task == "classification" else "r2"
    old_m, new_m = _metrics(task, y, old_pred), _metrics(task, y, new_pred)
    difference = new_m[metric] - old_m[metric]
    interval = paired_bootstrap(
        _difference_fn(task, y, old_pred, new_pred), len(y), resamples=resamples,
        confidence=confidence,
    )  # fmt: skip
    better = interval[0] > 0
    pct = f"{confidence:.0%}"
    if better and promote:
        reason = (
            f"promoted: {metric} {new_m[metric]:.4f} against {old_m[metric]:.4f} on the same "
            f"{len(y)} recent rows; the {pct} interval of the difference [{interval[0]:+.4f}, "
            f"{interval[1]:+.4f}] is above 0"
        )
    elif better:
        reason = (
            f"better beyond the {pct} interval [{interval[0]:+.4f}, {interval[1]:+.4f}] but not "
            "promoted: --promote was not given"
        )
    else:
        reason = (
            f"kept the champion: {metric} {new_m[metric]:.4f} against {old_m[metric]:.4f}; the "
            f"{pct} interval of the difference [{interval[0]:+.4f}, {interval[1]:+.4f}] "
            + ("reaches 0" if interval[1] > 0 else "is below 0")
        )
    decision = registry.decide(
        name, kind="retrain", alias=alias, challenger=challenger.version,
        promoted=better and promote, reason=reason,
        evidence={
            "metric": metric, "champion": {"version": champion.version, "metrics": old_m},
            "challenger": {"version": challenger.version, "metrics": new_m,
                           "training_test_metrics": challenger.metrics},
            "difference": difference, "interval": list(interval), "confidence": confidence,
            "resamples": resamples, "holdout_rows": len(y), "train_rows": training.num_rows,
            "data": sources, **dict(evidence or {}),
        },
    )  # fmt: skip
    return RetrainResult(
        champion, registry.get(challenger.ref), metric, old_m, new_m, difference, interval,
        confidence, better, decision, len(y), training.num_rows,
    )  # fmt: skip


def training_rows_from_log(registry: Registry, version: ModelVersion, since: timedelta) -> pa.Table:
    """The labelled rows of ``version``'s model in the prediction log of the last ``since``,
    oldest first, as training data: the model's inputs and its target (the true values).

    Raises:
        DataError: no labelled rows in the window.
    """
    from tandem.bundle import load_bundle
    from tandem.monitoring.feedback import TRUE, labelled
    from tandem.monitoring.predictions import TIME, read_log, since_ago

    manifest = load_bundle(version.path, expected_digest=version.digest).manifest
    log = read_log(version.name, since=since_ago(since), settings=registry.settings)
    rows = labelled(log, version.name, registry.settings)
    if rows is None:
        raise DataError(
            f"no labelled rows of {version.name} in the window to retrain on: send labels with "
            "`tandem feedback`, or retrain on files with `tandem retrain --data`"
        )
    rows = rows.sort_by(TIME)
    columns = {c.name: rows.column(c.name) for c in manifest.inputs}
    return pa.table({**columns, manifest.target: rows.column(TRUE)})
