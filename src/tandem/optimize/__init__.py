"""``tandem optimize``: a faster candidate of a registered model, gated by measurement.

The candidate is int8 (quantization with ONNX Runtime), a narrower MLP (structured pruning,
fine-tuned), or a small MLP student taught by the model (distillation).

An optimization never overwrites: it builds a candidate graph, measures it against the
version it came from on the same machine, in the same run, on the same holdout rows (see
:mod:`tandem.optimize.gate`), and registers it as a new version (parent: the original,
tag ``optimized``) only if it is faster at batch 1 and at batch 256 and loses at most
``max_loss`` points of the model's primary metric. Either way the table is printed and kept
in the registry, as an ``optimize`` run of the original version; an accepted candidate also
carries it in its manifest.

The holdout is ``data`` (labeled rows with the target column) or, by default, the test split
the version was scored on, rebuilt from its recipe if the training file is still there.

Structured pruning and distillation retrain (:mod:`tandem.optimize.retrain`), so this
package sits above training, not in :mod:`tandem.inference`, which must not import training
libraries. Each call applies one technique; they chain, as each candidate is a version.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tandem.bundle import write_bundle
from tandem.bundle.manifest import REFERENCE_SAMPLE
from tandem.bundle.store import Bundle, load_bundle
from tandem.data.readers import read_table
from tandem.data.schema import SPECIAL_KINDS, SUPERVISED
from tandem.errors import DataError, UsageError
from tandem.inference.predictor import Predictor
from tandem.ledger.meter import Meter
from tandem.ledger.records import run_record
from tandem.optimize.gate import BATCH, GateReport, measure_pair
from tandem.optimize.quantize import cpu_features, quantize
from tandem.registry import ModelVersion, Registry, VersionRecord
from tandem.training.metrics import PRIMARY, score

if TYPE_CHECKING:  # retraining imports torch: only the techniques that retrain pay for it
    from tandem.optimize.retrain import Retrained

__all__ = ["METHODS", "GateReport", "OptimizeResult", "optimize"]

METHODS = ("int8-dynamic", "int8-static")
#: rows of the calibration set used for static quantization, and per calibration batch
CALIBRATION_ROWS, CALIBRATION_BATCH = 2000, 64


@dataclass(frozen=True)
class OptimizeResult:
    """The gate's report and, when the candidate passed, the version it became."""

    report: GateReport
    version: ModelVersion | None
    source: ModelVersion
    #: what a retraining technique did (widths, epochs, teacher); empty for quantization
    retrained: dict[str, Any] = field(default_factory=dict)


def optimize(
    model: str,
    *,
    quantize_method: str | None = None,
    calibration: str | Path | None = None,
    prune: float | None = None,
    fine_tune_epochs: int | None = None,
    distill: Mapping[str, Any] | None = None,
    data: str | Path | None = None,
    max_loss: float = 0.5,
    rounds: int = 7,
    registry: Registry | None = None,
) -> OptimizeResult:
    """Build one faster candidate of ``model`` (``NAME[:V]`` or ``NAME@ALIAS``) and keep it
    if the gate passes. Pass one technique: ``quantize_method``, ``prune`` or ``distill``.

    Args:
        quantize_method: ``int8-dynamic`` or ``int8-static``.
        calibration: rows for static quantization (default: the Bundle's reference sample).
        prune: the share (0–1) of each hidden layer's neurons to remove from an MLP.
        fine_tune_epochs: at most this many epochs of fine-tuning after pruning (0: none;
            default 20).
        distill: the student's settings, e.g. ``{"hidden": 32, "temperature": 4, "alpha": 0.7}``
            (``{}``: the defaults; see :class:`~tandem.optimize.retrain.DistillSpec`); the
            teacher is ``model``, whatever its family.
        data: labeled holdout rows (default: the version's test split, from its recipe).
        max_loss: the most points (hundredths) of accuracy or R² the candidate may lose.
        rounds: alternating timing rounds.

    Example:
        >>> result = optimize("w1", quantize_method="int8-dynamic")  # doctest: +SKIP
        >>> result.report.accepted, result.version.ref  # doctest: +SKIP
        (True, 'w1:2')
    """
    chosen = [n for n, v in (("--quantize", quantize_method), ("--prune", prune),
                             ("--distill", distill)) if v is not None]  # fmt: skip
    if len(chosen) != 1:
        raise UsageError(
            "pass one of --quantize, --prune or --distill"
            + (f", not {' and '.join(chosen)}: chain them, optimizing the version the first "
               "registers" if chosen else "")
        )  # fmt: skip
    if quantize_method is not None and quantize_method not in METHODS:
        raise UsageError(f"unknown quantization '{quantize_method}': choose {', '.join(METHODS)}")
    if fine_tune_epochs is not None and prune is None:
        raise UsageError("--fine-tune-epochs is how long --prune fine-tunes; it has no other use")
    if calibration is not None and quantize_method != "int8-static":
        raise UsageError("--calibration calibrates --quantize int8-static; it has no other use")
    if quantize_method is None:
        from tandem.optimize import retrain
    spec = retrain.DistillSpec.parse(distill) if distill is not None else None
    if not max_loss >= 0:
        raise UsageError(f"--max-loss is in points and must be >= 0; got {max_loss}")
    with contextlib.nullcontext(registry) if registry is not None else Registry() as reg:
        source = reg.get(model)
        bundle = load_bundle(source.path, expected_digest=source.digest)
        special = [c.kind for c in bundle.manifest.inputs if c.kind in SPECIAL_KINDS]
        if special:
            raise UsageError(
                f"{source.ref} takes {special[0]} input: optimize rebuilds a version's test split "
                "from a table for now; the text model's int8 figure is measured by "
                "benchmarks/bench_optimize_text.py"
            )
        if bundle.manifest.task not in SUPERVISED:
            raise UsageError(
                f"{source.ref} is a {bundle.manifest.task} model: optimize gates a candidate on "
                "the accuracy or R² it keeps on labeled rows, which it has none of"
            )
        retrained = None
        with Meter() as meter:
            predictor = Predictor(bundle, threads=1)
            if quantize_method is not None:
                technique = quantize_method
                graph = quantize(bundle.graph, quantize_method,
                                 calibration=_calibration(predictor, bundle, calibration))  # fmt: skip
            else:
                if spec is not None:
                    technique = spec.label(bundle.manifest.task)
                    retrained = retrain.distill(bundle, spec)
                else:
                    assert prune is not None
                    technique = f"prune {prune:.0%}"
                    epochs = 20 if fine_tune_epochs is None else fine_tune_epochs
                    retrained = retrain.prune(bundle, prune, epochs=epochs)
                graph = retrained.graph
            holdout = retrained.test if retrained is not None and data is None else None
            report = _gate(bundle, predictor, graph, technique,
                           holdout or _holdout(bundle, data), max_loss, rounds)  # fmt: skip
        done = retrained.details if retrained is not None else {}
        details: dict[str, Any] = {"technique": technique, "from": source.ref,
                                   "report": report.to_json()}  # fmt: skip
        if retrained is not None:
            details["retrained"] = done
        rows = retrained.rows if retrained is not None else 0
        reg.record_run(source.name, source.version,
                       run_record("optimize", meter.profile, rows, details))  # fmt: skip
        if not report.accepted:
            return OptimizeResult(report, None, source, done)
        version = reg.register(source.name, _writer(bundle, source, graph, report, details,
                                                    retrained))  # fmt: skip
    return OptimizeResult(report, version, source, done)


def _gate(
    bundle: Bundle, predictor: Predictor, graph: bytes, technique: str,
    holdout: tuple[Any, np.ndarray], max_loss: float, rounds: int,
) -> GateReport:  # fmt: skip
    """Measure ``graph`` against the Bundle's own on the ``holdout`` (columns, targets), and
    judge it; ``predictor`` runs the Bundle (its preprocessing makes the graphs' feeds)."""
    manifest = bundle.manifest
    columns, y = holdout
    feed = predictor.encode(predictor.preprocess(columns))
    n = len(y)
    if n == 0:
        raise DataError("the holdout has no rows with a target value")
    single = [_rows(feed, i, i + 1) for i in range(min(n, 200))]
    batch = _rows(feed, 0, BATCH) if n >= BATCH else _tile(feed, BATCH)
    output = manifest.output

    def evaluate(run: Any) -> dict[str, float]:
        out = np.concatenate([run(_rows(feed, i, i + BATCH)) for i in range(0, n, BATCH)])
        return score(manifest.task, y, out if manifest.task == "classification" else out[:, 0])

    before, after, latency, throughput, run_after = measure_pair(
        bundle.graph, graph, single=single, batch=batch, evaluate=evaluate, output=output,
        rounds=rounds,
    )  # fmt: skip
    dependent = None
    if manifest.task == "classification":
        k = min(n, 1000)
        one = np.concatenate([run_after(_rows(feed, i, i + 1)) for i in range(k)])
        many = np.concatenate([run_after(_rows(feed, i, i + BATCH)) for i in range(0, k, BATCH)])
        dependent = int(np.sum(one.argmax(axis=1) != many[:k].argmax(axis=1)))
    return GateReport(technique, PRIMARY[manifest.task], max_loss, before, after, latency,
                      throughput, dependent, cpu_features())  # fmt: skip


def _holdout(bundle: Bundle, data: str | Path | None) -> tuple[Any, np.ndarray]:
    """Input columns and targets (class codes, or values) of the rows the gate scores on."""
    manifest = bundle.manifest
    if data is None:
        from tandem.training.train import test_split

        return test_split(manifest)
    table = read_table(data)
    if manifest.target not in table.column_names:
        raise DataError(
            f"{data} has no column '{manifest.target}', the target: the gate needs labeled rows"
        )
    table = table.filter(pc.is_valid(table.column(manifest.target)))
    values = table.column(manifest.target).to_pylist()
    if manifest.task != "classification":
        return table, np.asarray(values, dtype=np.float64)
    codes = {c: i for i, c in enumerate(manifest.classes)}
    unknown = sorted({repr(v) for v in values if v not in codes})
    if unknown:
        raise DataError(
            f"{data}: target values {', '.join(unknown[:5])} are not classes of the model "
            f"({', '.join(map(repr, manifest.classes))})"
        )
    return table, np.fromiter((codes[v] for v in values), dtype=np.int64, count=len(values))


def _calibration(
    predictor: Predictor, bundle: Bundle, calibration: str | Path | None
) -> Iterator[dict[str, np.ndarray]]:
    """Graph feeds of the calibration rows, in batches."""
    if calibration is not None:
        table = read_table(calibration)
    elif REFERENCE_SAMPLE in bundle.extras:
        table = pq.read_table(io.BytesIO(bundle.extras[REFERENCE_SAMPLE]))
    else:
        raise UsageError("this Bundle keeps no reference sample: pass --calibration FILE")
    table = table.slice(0, CALIBRATION_ROWS)
    for start in range(0, table.num_rows, CALIBRATION_BATCH):
        yield predictor.encode(predictor.preprocess(table.slice(start, CALIBRATION_BATCH)))


def _rows(feed: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of a graph feed (rows are its arrays' last axis)."""
    return {k: np.ascontiguousarray(v[..., start:stop]) for k, v in feed.items()}


def _tile(feed: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """``n`` rows made by repeating a small holdout's."""
    have = next(iter(feed.values())).shape[-1]
    index = np.arange(n) % have
    return {k: np.ascontiguousarray(v[..., index]) for k, v in feed.items()}


def _writer(
    bundle: Bundle, source: ModelVersion, graph: bytes, report: GateReport,
    details: dict[str, Any], retrained: Retrained | None,
) -> Callable[[Path, int], VersionRecord]:  # fmt: skip
    manifest = bundle.manifest
    extra = {**manifest.details, "optimization": details,
             "metrics": {"holdout": report.after.metrics}}  # fmt: skip
    family = manifest.family
    if retrained is not None:  # a new network: describe it, and profile its outputs for drift
        family = retrained.family.name
        extra.update(model=retrained.described,
                     reference_outputs=retrained.reference_outputs)  # fmt: skip

    def write(directory: Path, version: int) -> VersionRecord:
        digest = write_bundle(
            directory, replace(manifest, version=version, family=family, details=extra), graph,
            dict(bundle.extras),
        )  # fmt: skip
        return VersionRecord(
            digest=digest, task=manifest.task, family=family,
            metrics=report.after.metrics, data_fingerprint=source.data_fingerprint,
            parent_version=source.version, description=f"{report.technique} of {source.ref}",
            tags={"optimized": report.technique},
        )  # fmt: skip

    return write
