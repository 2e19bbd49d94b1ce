"""The ``auto`` choice: train every family, rank them, keep the best.

Each candidate is fitted on the training split with the validation split for early stopping
and scored on validation and test. On small data a validation split of a few dozen rows
decides by one or two rows (wine: 27 rows, where one row is 0.037 accuracy), so below
:data:`CV_MAX_ROWS` rows the ranking uses k-fold cross-validation over training + validation
instead: every one of those rows is scored once. The test split is never used to choose.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tandem.data.schema import Task
from tandem.data.split import kfold_indices
from tandem.errors import TandemError, TrainingError
from tandem.models import FAMILIES, Family, FitContext
from tandem.training.checkpoint import Checkpointer
from tandem.training.loop import TorchOptions
from tandem.training.metrics import PRIMARY, score

__all__ = ["CV_FOLDS", "CV_MAX_ROWS", "Candidate", "OnFit", "fit_candidates", "rank_key"]

log = logging.getLogger(__name__)

#: training + validation rows up to which candidates are ranked by cross-validation
CV_MAX_ROWS = 5000
CV_FOLDS = 5


#: ``on_fit(family, stage)`` is called as each fit starts ("fit", "cv 1/5", ...) and returns the
#: epoch callback of that fit (see :attr:`FitContext.on_epoch`)
OnFit = Callable[[str, str], Callable[[int, dict[str, float]], None]]


@dataclass(frozen=True)
class Candidate:
    """One family's result on the leaderboard; ``cv`` holds mean cross-validated metrics when
    the ranking used them."""

    family: str
    validation: dict[str, float]
    test: dict[str, float]
    seconds: float
    chosen: bool = False
    error: str | None = None
    cv: dict[str, float] = field(default_factory=dict)

    @property
    def ranked_on(self) -> dict[str, float]:
        return self.cv or self.validation

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "validation": self.validation,
            "test": self.test,
            "cv": self.cv,
            "seconds": self.seconds,
            "chosen": self.chosen,
            "error": self.error,
        }


def rank_key(task: Task) -> Callable[[Candidate], tuple[float, ...]]:
    """Higher is better: accuracy, ties to the lower log loss; R² for regression."""
    primary = PRIMARY[task]
    if task == "classification":
        return lambda c: (c.ranked_on[primary], -c.ranked_on["log_loss"])
    return lambda c: (c.ranked_on[primary],)


def _cross_validate(
    name: str, X: np.ndarray, y: np.ndarray, ctx: FitContext, k: int, params: Mapping[str, Any],
    on_fit: OnFit | None,
) -> dict[str, float]:  # fmt: skip
    """Mean metrics of ``k`` fits, each scored on the fold it did not see (and used for its
    early stopping, as the validation split is for the final fit: the same for every family)."""
    folds = kfold_indices(
        len(y), k=k, labels=y if ctx.task == "classification" else None, seed=ctx.seed
    )
    scores: list[dict[str, float]] = []
    for i, held in enumerate(folds):
        now = time.monotonic()
        if scores and now > ctx.deadline:
            break  # out of time: the folds done so far still rank
        rest = np.concatenate([f for j, f in enumerate(folds) if j != i])
        fold_ctx = replace(ctx, deadline=now + (ctx.deadline - now) / (k - i),
                           on_epoch=on_fit(name, f"cv {i + 1}/{k}") if on_fit else None)  # fmt: skip
        family = FAMILIES[name](**params).fit(X[rest], y[rest], X[held], y[held], fold_ctx)
        scores.append(score(ctx.task, y[held], family.predict(X[held])))
    return {m: float(np.mean([s[m] for s in scores])) for m in scores[0]}


def fit_candidates(
    names: list[str],
    X: dict[str, np.ndarray],
    ys: dict[str, np.ndarray],
    *,
    task: Task,
    n_classes: int,
    seed: int,
    time_budget: float | None,
    on_start: Callable[[int, str], None],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    on_fit: OnFit | None = None,
    torch: TorchOptions | None = None,
    checkpoint: Callable[[str], Checkpointer | None] | None = None,
) -> tuple[list[Candidate], dict[str, Family]]:
    """Fit each named family; returns the leaderboard (in ``names`` order) and the fitted models.

    Args:
        X, ys: the ``train``, ``validation`` and ``test`` feature matrices and targets.
        time_budget: seconds shared by the candidates, each getting an equal share of what is
            left (so a fast family leaves its time to the next); None for no limit.
        on_start: called with (index, name) before each candidate.
        params: constructor arguments per family name (e.g. ``{"mlp": {"hidden": 256}}``).
        on_fit: told of each fit (final and cross-validation folds) as it starts.
        torch: device, precision and engine of torch families (cross-validation folds run
            in process, on the same device and precision).
        checkpoint: the checkpointer of a family's final fit, by family name.
    """
    started = time.monotonic()
    end = math.inf if time_budget is None else started + time_budget
    pooled = len(ys["train"]) + len(ys["validation"])
    use_cv = len(names) > 1 and pooled <= CV_MAX_ROWS
    X_pool = np.concatenate([X["train"], X["validation"]]) if use_cv else X["train"]
    y_pool = np.concatenate([ys["train"], ys["validation"]]) if use_cv else ys["train"]
    leaderboard: list[Candidate] = []
    fitted: dict[str, Family] = {}
    for i, name in enumerate(names):
        on_start(i, name)
        now = time.monotonic()
        deadline = now + (end - now) / (len(names) - i) if math.isfinite(end) else math.inf
        # with cross-validation, the final fit gets 1 share of the slot and the folds the rest
        final_deadline = (
            now + (deadline - now) / (CV_FOLDS + 1)
            if use_cv and math.isfinite(deadline)
            else deadline
        )
        in_process = torch and replace(torch, engine="local", workers=1, ray_address=None)
        cv_ctx = FitContext(
            task=task, n_classes=n_classes, seed=seed, deadline=deadline, torch=in_process
        )
        ctx = replace(
            cv_ctx, deadline=final_deadline, torch=torch,
            checkpoint=checkpoint(name) if checkpoint else None,
        )  # fmt: skip
        try:
            kwargs = (params or {}).get(name, {})
            fit_ctx = replace(ctx, on_epoch=on_fit(name, "fit") if on_fit else None)
            family = FAMILIES[name](**kwargs).fit(
                X["train"], ys["train"], X["validation"], ys["validation"], fit_ctx
            )
            val = score(task, ys["validation"], family.predict(X["validation"]))
            test = score(task, ys["test"], family.predict(X["test"]))
            cv = (
                _cross_validate(name, X_pool, y_pool, cv_ctx, CV_FOLDS, kwargs, on_fit)
                if use_cv
                else {}
            )
        except TandemError:
            raise
        except Exception as exc:
            if len(names) == 1:
                raise TrainingError(f"training {name} failed: {exc}") from exc
            log.warning("candidate %s failed: %s", name, exc)
            leaderboard.append(Candidate(name, {}, {}, time.monotonic() - now, error=str(exc)))
            continue
        fitted[name] = family
        leaderboard.append(Candidate(name, val, test, time.monotonic() - now, cv=cv))
    if not fitted:
        raise TrainingError(
            "every candidate failed: " + "; ".join(f"{c.family}: {c.error}" for c in leaderboard)
        )
    return leaderboard, fitted
