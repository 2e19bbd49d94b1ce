"""Training without a target: k-means, PCA, autoencoder (see :mod:`tandem.models.unsupervised`).

The flow is the supervised one with the target taken out: read → infer the feature columns
→ split (unstratified) → fit the preprocessing on train → fit the one family named by
``model`` → score it on validation and test by its own metrics → one ONNX graph, checked
against the in-memory model on the test rows → register with reference statistics of the
inputs and of the outputs, so ``monitor`` watches both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tandem.data.profile import output_profile, profile_columns
from tandem.data.schema import coerce_column, infer_columns
from tandem.data.split import split_indices
from tandem.errors import ConfigError, TandemError, TrainingError
from tandem.features.preprocess import Preprocessor
from tandem.ledger.meter import Meter
from tandem.ledger.records import EpochLog
from tandem.models.auto import Candidate
from tandem.models.base import FitContext, configured
from tandem.models.unsupervised import UNSUPERVISED
from tandem.monitoring.predictions import output_columns
from tandem.monitoring.sample import reference_sample, sample_to_table
from tandem.training.loop import TorchOptions

if TYPE_CHECKING:
    from tandem.training.train import Run, TrainResult

__all__ = ["DEFAULT_MODEL", "train_unsupervised"]

#: what ``model="auto"`` means without a target
DEFAULT_MODEL = "kmeans"


def train_unsupervised(
    data: Any, run: Run, *, model: str, seed: int, ignore: Sequence[str],
    params: Mapping[str, Any] | None, torch: TorchOptions | None, time_budget: float | None,
) -> TrainResult:  # fmt: skip
    """Fit, freeze and register one unsupervised family (the work of ``tandem.train`` when
    no target is given); returns a :class:`~tandem.training.train.TrainResult`."""
    from tandem.training import train as supervised  # the shared freezing and registering

    model = DEFAULT_MODEL if model == "auto" else model
    if model not in UNSUPERVISED:
        raise ConfigError(
            f"'{model}' needs a target; without one choose {', '.join(UNSUPERVISED)} "
            "(or name the target column with --target)"
        )
    if torch is not None and torch.engine == "ray":
        raise ConfigError("--engine ray trains supervised networks; unsupervised ones run locally")
    family = configured(UNSUPERVISED[model], model, params)
    total = 4
    with Meter() as meter:
        epochs = EpochLog(meter)
        run.notify(0, total, "reading data")
        table, source = supervised._as_table(data)
        specs = infer_columns(table, target="", ignore=ignore)
        columns = {s.name: coerce_column(s, table.column(s.name)) for s in specs}
        split = split_indices(table.num_rows, seed=seed)
        rows_of = {"train": split.train, "validation": split.validation, "test": split.test}
        parts = {k: {c: v[i] for c, v in columns.items()} for k, i in rows_of.items()}
        pre = Preprocessor(specs).fit(parts["train"])
        X = {k: pre.transform(v) for k, v in parts.items()}
        run.notify(1, total, f"training {model}")
        started = time.monotonic()
        ctx = FitContext(
            task=family.task, n_classes=0, seed=seed, on_epoch=epochs.fit(model, "fit"),
            deadline=math.inf if time_budget is None else started + time_budget,
        )  # fmt: skip
        empty = np.zeros(0)
        try:
            family.fit(X["train"], empty, X["validation"], empty, ctx)
        except TandemError:
            raise
        except Exception as exc:
            raise TrainingError(f"training {model} failed: {exc}; nothing was registered") from exc
        best = Candidate(
            model, family.evaluate(X["validation"]), family.evaluate(X["test"]),
            time.monotonic() - started, chosen=True,
        )  # fmt: skip
        run.notify(2, total, "freezing and verifying")
        outputs = family.outputs
        graph = supervised.build_graph(pre, family, outputs)
        frozen_out = supervised.graph_output(graph, pre, parts["test"])
        live = family.predict(X["test"]).reshape(frozen_out.shape)
        tolerance = supervised.PARITY_TOLERANCE * max(1.0, float(np.max(np.abs(live), initial=0.0)))
        parity = supervised.check_parity(frozen_out, live, tolerance, f"{model} graph")
        reference_outputs = output_profile(output_columns(outputs, family.predict(X["validation"])))
        frozen = supervised.Frozen(
            outputs=outputs, target="", inputs=tuple(pre.columns), leaderboard=[best], best=best,
            graph=graph, parity=parity, fingerprint=supervised.fingerprint(table), source=source,
            rows={k: len(v) for k, v in rows_of.items()}, ignored=list(ignore),
            reference=profile_columns(pre.columns, parts["train"]),
            reference_outputs=reference_outputs,
            sample=sample_to_table(pre.columns, reference_sample(pre.columns, parts["train"])),
            preprocessing=pre.state(), model=family.describe(),
            recipe={
                "target": None, "task": family.task, "model": model, "time_budget": time_budget,
                "seed": seed, "ignore": list(ignore), "params": dict(params or {}),
            },
        )  # fmt: skip
    pipeline = supervised.Pipeline(pre, family)
    return supervised.finish(
        frozen, meter, epochs, run, pipeline=pipeline, split=split, total=total
    )  # fmt: skip
