"""``tandem monitor``: production rows against what the model's Bundle froze at training.

The rows come from a file (``--current``) or from the prediction log (``--since 24h``). What is
compared, never with the training data itself:

- every input column, against the reference statistics (:mod:`tandem.monitoring.drift`),
  with a Kolmogorov–Smirnov test per numeric column against the reference sample the Bundle
  keeps (its p-values join the same Benjamini–Hochberg correction);
- the model's outputs (prediction drift: ``__label``, ``__proba_<class>``, ``__prediction``)
  against their statistics on the validation split: logged outputs of this version, or for a
  file, the model run on it;
- all columns together: a domain classifier's AUC against the reference sample
  (:mod:`tandem.monitoring.sample`);
- once labels have arrived (``tandem feedback``, or a target column in the file): realized
  performance per time window, and an ADWIN change detector on the error stream.

**The dataset-level verdict**: drift when any column (input or output) drifts by the rule of
:mod:`tandem.monitoring.drift`, or when the domain classifier's AUC is significant and over
its threshold. Decay is reported beside it, not folded into it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tandem.bundle.manifest import REFERENCE_SAMPLE, Manifest
from tandem.bundle.store import Bundle, load_bundle
from tandem.data.images import is_image_folder, read_image_folder
from tandem.data.readers import read_table
from tandem.data.schema import coerce_column
from tandem.errors import BundleError, DataError
from tandem.monitoring.drift import DatasetDrift, drift
from tandem.monitoring.feedback import TRUE, labelled
from tandem.monitoring.performance import Window, decay, windows
from tandem.monitoring.predictions import (
    TIME,
    VERSION,
    decoded_columns,
    logged_outputs,
    read_log,
    since_ago,
)
from tandem.monitoring.sample import DomainDrift, domain_classifier, ks_tests, sample_from_table
from tandem.registry import Registry

__all__ = ["MonitorReport", "Performance", "check"]


@dataclass(frozen=True)
class MonitorReport:
    """What ``tandem monitor`` found; :attr:`reference` and :attr:`current` (the compared
    columns) are kept for the HTML report and left out of :meth:`to_json`."""

    model: str
    source: str
    rows: int
    result: DatasetDrift
    domain: DomainDrift | None
    performance: Performance | None
    notes: list[str]
    reference: dict[str, Any] = field(repr=False)
    current: dict[str, np.ndarray] = field(repr=False)

    @property
    def drifted(self) -> bool:
        return self.result.drifted or (self.domain is not None and self.domain.drifted)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "current": self.source,
            "rows": self.rows,
            "q": self.result.q,
            "drifted": self.drifted,
            "drifted_columns": self.result.drifted_columns,
            "columns": [asdict(c) for c in self.result.columns],
            "domain_classifier": None if self.domain is None else asdict(self.domain),
            "performance": None if self.performance is None else self.performance.to_json(),
            "notes": self.notes,
        }


def check(
    registry: Registry,
    ref: str,
    *,
    current: str | Path | None = None,
    since: timedelta | None = None,
    q: float = 0.05,
    window: timedelta = timedelta(days=1),
) -> MonitorReport:
    """Drift (and, with labels, decay) of production rows against ``ref``'s Bundle.

    Args:
        current: a file (CSV, Parquet, JSONL) or folder of production rows; or
        since: the prediction log's rows of the last ``since``.
        q: the false discovery rate of the column tests.
        window: the width of the realized-performance windows.

    Raises:
        DataError: the rows lack some of the model's input columns, or there are none.
        BundleError: the Bundle was frozen without reference statistics.
    """
    if not 0 < q < 1:
        raise DataError(f"q must be between 0 and 1; got {q}")
    if (current is None) == (since is None):
        raise DataError("give the rows to check: --current FILE or --since DURATION (one of them)")
    version = registry.get(ref)
    bundle = load_bundle(version.path, expected_digest=version.digest)
    manifest = bundle.manifest
    reference = manifest.details.get("reference")
    if not reference:
        raise BundleError(f"{version.ref} has no reference statistics; retrain it to monitor it")
    from tandem.inference.predictor import Predictor  # loaded here: the CLI imports this module

    predictor = Predictor(bundle)
    notes: list[str] = []
    if current is not None:
        table = read_image_folder(current) if is_image_folder(current) else read_table(current)
        source = str(current)
        _need_inputs(table, predictor.input_names, source)
        feed = predictor.encode(predictor.preprocess(table))  # once: outputs and statistics
        # through decode, which applies a recommender's rank rules
        outputs = decoded_columns(manifest.outputs, predictor.decode(predictor.forward(feed)))
        truth = _truth(table, manifest.target, outputs)
        columns = predictor.input_statistics(feed) or _coerced(manifest, table)
    else:
        assert since is not None
        table = read_log(version.name, since=since_ago(since), settings=registry.settings)
        source = f"prediction log, last {_duration_text(since)} ({version.name})"
        _need_inputs(table, predictor.monitored_inputs, source)
        mine = pc.equal(table.column(VERSION), version.version)
        outputs = logged_outputs(table.filter(mine), manifest.outputs)
        if not outputs:
            notes.append(f"no predictions of {version.ref} in the window: no prediction drift")
        truth = labelled(table.filter(mine), version.name, registry.settings)
        # an image or text model's log keeps per-row statistics in place of its input
        stats = predictor.monitored_inputs != predictor.input_names
        columns = (
            {n: table.column(n).to_numpy(zero_copy_only=False) for n in predictor.monitored_inputs}
            if stats
            else _coerced(manifest, table)
        )
    compared = {n: reference[n] for n in columns if n in reference}
    out_reference = manifest.details.get("reference_outputs") or {}
    if outputs and not out_reference:
        notes.append(f"{version.ref} was frozen without output statistics: no prediction drift")
    for name, values in outputs.items():
        if name in out_reference:
            compared[name] = out_reference[name]
            columns[name] = values
    domain, more_p = _sample_tests(bundle, columns, notes)
    result = drift(compared, columns, q=q, more_p=more_p)
    performance = _performance(manifest, truth, window, notes)
    return MonitorReport(
        version.ref, source, table.num_rows, result, domain, performance, notes, compared, columns
    )


def _coerced(manifest: Manifest, table: pa.Table) -> dict[str, np.ndarray]:
    """A table model's input columns, coerced as the reference statistics were."""
    return {c.name: coerce_column(c, table.column(c.name)) for c in manifest.inputs}


def _need_inputs(table: pa.Table, inputs: list[str], source: str) -> None:
    missing = [c for c in inputs if c not in table.column_names]
    if missing:
        raise DataError(
            f"{source} lacks the model's input column(s) {missing}: monitor the rows the model "
            "is given, with the names it was trained on"
        )
    if table.num_rows == 0:
        raise DataError(f"{source} has no rows to compare")


def _truth(table: pa.Table, target: str, outputs: dict[str, np.ndarray]) -> pa.Table | None:
    """A file's own labels (its target column) beside the model's outputs on it, as
    :func:`labelled` gives logged ones."""
    if target not in table.column_names:
        return None
    return pa.table({**outputs, TRUE: table.column(target)})


def _sample_tests(
    bundle: Bundle, columns: dict[str, np.ndarray], notes: list[str]
) -> tuple[DomainDrift | None, dict[str, dict[str, float]]]:
    raw = bundle.extras.get(REFERENCE_SAMPLE)
    if raw is None:
        notes.append("the Bundle keeps no reference sample: no KS tests, no domain classifier")
        return None, {}
    import pyarrow.parquet as pq

    specs = list(bundle.manifest.inputs)
    sample = sample_from_table(specs, pq.read_table(pa.BufferReader(raw)))
    inputs = {s.name: columns[s.name] for s in specs}
    ks = {name: {"ks": p} for name, (_, p) in ks_tests(specs, sample, inputs).items()}
    try:
        domain = domain_classifier(specs, sample, inputs)
    except DataError as exc:
        notes.append(f"no domain classifier: {exc}")
        domain = None
    return domain, ks


@dataclass(frozen=True)
class Performance:
    """Realized performance of the labelled rows: overall, per window, beside the model's
    test metrics at training; and where an ADWIN detector first saw the errors rise
    (a time, or for a file without times, a row)."""

    rows: int
    overall: dict[str, float]
    at_training: dict[str, float]
    windows: list[Window]
    alarm: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "overall": self.overall, "at_training": self.at_training,
            "windows": [{"start": str(w.start), "end": str(w.end), "rows": w.rows,
                         "metrics": w.metrics} for w in self.windows],
            "alarm": self.alarm,
        }  # fmt: skip


def _performance(
    manifest: Any, truth: pa.Table | None, window: timedelta, notes: list[str]
) -> Performance | None:
    if truth is None:
        notes.append("no labels yet: no realized performance (send them with `tandem feedback`)")
        return None
    task = manifest.task
    column = "__label" if task == "classification" else "__prediction"
    y = truth.column(TRUE).to_numpy(zero_copy_only=False)
    predicted = truth.column(column).to_numpy(zero_copy_only=False)
    if task == "classification":  # labels compared as text: a file's 1 and a model's "1"
        y = np.asarray([None if v is None else str(v) for v in y], dtype=object)
        predicted = np.asarray([str(v) for v in predicted], dtype=object)
    timed = TIME in truth.column_names
    times = (
        truth.column(TIME).cast(pa.timestamp("us")).to_numpy(zero_copy_only=False)
        if timed
        else np.datetime64("1970-01-01", "us") + np.arange(truth.num_rows).astype("timedelta64[us]")
    )
    proba = None
    if task == "classification" and len(manifest.classes) == 2:
        proba = truth.column(f"__proba_{manifest.classes[1]}").to_numpy(zero_copy_only=False)
    classes = [str(c) for c in manifest.classes] if proba is not None else None
    # one window as wide as a century: the metrics over every labelled row
    overall = windows(times, y, predicted, task=task, every=timedelta(days=36500), proba=proba,
                      classes=classes)  # fmt: skip
    if not overall:
        notes.append("the labels match no prediction in the window: no realized performance")
        return None
    found = (
        windows(times, y, predicted, task=task, every=window, proba=proba, classes=classes)
        if timed
        else []
    )
    fired = decay(times, y, predicted, task=task)
    alarm = None
    if fired is not None:
        alarm = (
            f"{fired.astype('datetime64[s]')} UTC"
            if timed
            else f"row {int((fired - times[0]).astype(int))}"
        )
    return Performance(
        overall[0].rows, overall[0].metrics,
        dict(manifest.details.get("metrics", {}).get("test", {})), found, alarm,
    )  # fmt: skip


def _duration_text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
