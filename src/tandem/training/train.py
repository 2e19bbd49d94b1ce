"""``tandem.train``: data in, a registered, verified Bundle out.

read → infer schema and task → split → fit preprocessing on train → fit the candidate
families (within the time budget) → pick by validation (small data: cross-validation)
score → build one ONNX graph →
check its predictions against the in-memory model on the test split → register.
Nothing is registered unless every step succeeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tandem.bundle import Manifest, write_bundle
from tandem.bundle.graph import GraphBuilder
from tandem.bundle.manifest import REFERENCE_SAMPLE
from tandem.bundle.outputs import Outputs
from tandem.config import Settings
from tandem.data.images import is_image_folder
from tandem.data.profile import output_profile, profile_columns
from tandem.data.readers import check_unique_columns, detect_format, list_parts, read_table
from tandem.data.schema import ColumnSpec, Task, coerce_column, infer_columns, infer_task
from tandem.data.split import Split, split_indices
from tandem.errors import ConfigError, DataError, TrainingError
from tandem.features.images import ImagePreprocessor
from tandem.features.preprocess import Preprocessor, feed_of
from tandem.inference.runtime import make_session
from tandem.ledger.meter import Meter, Profile
from tandem.ledger.records import EpochLog, run_record
from tandem.models import FAMILIES, Family
from tandem.models.auto import Candidate, fit_candidates, rank_key
from tandem.models.base import configured
from tandem.models.unsupervised import UNSUPERVISED, UNSUPERVISED_TASKS
from tandem.monitoring.predictions import output_columns
from tandem.monitoring.sample import reference_sample, sample_to_table
from tandem.registry import ModelVersion, Registry, VersionRecord, validate_name
from tandem.training.checkpoint import FILE as CHECKPOINT_FILE
from tandem.training.checkpoint import Checkpointer
from tandem.training.images import image_column, train_images
from tandem.training.loop import TorchOptions, resolve_hardware
from tandem.training.recommend import train_recommender
from tandem.training.text import looks_like_text, train_text
from tandem.training.unsupervised import train_unsupervised

__all__ = [
    "PARITY_TOLERANCE",
    "Candidate",
    "CheckpointOptions",
    "Pipeline",
    "ProgressEvent",
    "Rebuilt",
    "Run",
    "TrainResult",
    "freeze",
    "kind_of",
    "rebuild",
    "test_split",
    "train",
]

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
ModelChoice = Literal["auto", "linear", "gbdt", "mlp", "kmeans", "pca", "autoencoder"]


@dataclass(frozen=True)
class ProgressEvent:
    step: int
    total: int
    message: str


@dataclass(frozen=True)
class Pipeline:
    """The trained pipeline in memory (preprocessing + model), before freezing."""

    #: a :class:`Preprocessor` for tables, an :class:`ImagePreprocessor` for images, ...
    preprocessor: Any
    #: a :class:`Family`, or the text model (which takes token feeds, not a matrix)
    family: Any

    def predict(self, columns: Mapping[str, Any]) -> np.ndarray:
        """The model's output for raw columns keyed by name: probabilities (n, n_classes),
        values (n,), or an unsupervised family's output."""
        return np.asarray(self.family.predict(self.preprocessor.features(columns)))


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced: the registered version, the leaderboard, the cost."""

    version: ModelVersion
    task: Task
    family: str
    leaderboard: list[Candidate]
    profile: Profile
    parity_max_abs: float
    rows: dict[str, int]
    pipeline: Pipeline
    #: row indices of the train / validation / test splits in the data after dropping rows
    #: without a target
    split: Split


@dataclass
class _Prepared:
    specs: list[ColumnSpec]
    columns: dict[str, np.ndarray]
    y: np.ndarray
    task: Task
    classes: list[Any]
    fingerprint: str


def _as_table(data: str | Path | pa.Table | Any) -> tuple[pa.Table, str]:
    if isinstance(data, str | Path):
        return read_table(data), str(data)
    if type(data).__module__.startswith("pandas"):
        check_unique_columns([str(c) for c in data.columns], "the DataFrame")
        return pa.Table.from_pandas(data, preserve_index=False), "pandas dataframe"
    if isinstance(data, pa.Table):
        check_unique_columns(data.column_names, "the table")
        return data, "arrow table"
    raise DataError(
        f"cannot train on a {type(data).__name__}: give a file or folder path, a pyarrow Table or a pandas DataFrame"
    )


def fingerprint(table: pa.Table) -> str:
    """SHA-256 of the table's content (columns, types, values), independent of file format."""
    h = hashlib.sha256()
    for name in sorted(table.column_names):
        col = table.column(name).combine_chunks()
        h.update(f"{name}:{col.type}:{len(col)}".encode())
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, pa.schema([(name, col.type)])) as writer:
            writer.write_table(pa.table({name: col}))
        h.update(sink.getvalue().to_pybytes())
    return "sha256:" + h.hexdigest()


def _prepare(
    table: pa.Table, target: str, task: Task | Literal["auto"], ignore: Sequence[str]
) -> _Prepared:
    table, task, classes, y = prepare_target(table, target, task)
    specs = infer_columns(table, target=target, ignore=ignore)
    columns = {s.name: coerce_column(s, table.column(s.name)) for s in specs}
    return _Prepared(specs, columns, y, task, classes, fingerprint(table))


def prepare_target(
    table: pa.Table, target: str, task: Task | Literal["auto"]
) -> tuple[pa.Table, Task, list[Any], np.ndarray]:
    """The rows that have a target, the task (inferred for ``auto``), the classes in code
    order (classification) and the targets as class codes or float values."""
    if target not in table.column_names:
        raise DataError(
            f"target column '{target}' is not in the data; columns are {table.column_names}: pass one with --target"
        )
    table = table.filter(pc.is_valid(table.column(target)))
    y_raw = table.column(target)
    if pa.types.is_floating(y_raw.type):
        table = table.filter(pc.invert(pc.is_nan(table.column(target))))
        y_raw = table.column(target)
    if table.num_rows == 0:
        raise DataError(f"target column '{target}' has no values: every row is missing it")
    inferred = infer_task(y_raw, target)
    task = inferred if task == "auto" else task
    values = y_raw.to_numpy(zero_copy_only=False)
    if task == "classification":
        classes = sorted(set(values.tolist()), key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            raise DataError(
                f"target '{target}' has a single class ({classes[0]!r}): classification needs at least two"
            )
        lookup = {c: i for i, c in enumerate(classes)}
        y = np.fromiter((lookup[v] for v in values.tolist()), dtype=np.int64, count=len(values))
    else:
        if not (pa.types.is_integer(y_raw.type) or pa.types.is_floating(y_raw.type)):
            raise DataError(
                f"target '{target}' holds {y_raw.type} values: regression needs numbers; use --task classification"
            )
        classes, y = [], np.asarray(values, dtype=np.float64)
        if not np.isfinite(y).all():
            raise DataError(
                f"target '{target}' has {int(np.sum(~np.isfinite(y)))} infinite values: drop those rows or cap them"
            )
        if np.ptp(y) == 0:
            raise DataError(
                f"target '{target}' has the single value {float(y[0])!r}: there is nothing to predict"
            )
    return table, task, classes, y


def _notify(callback: Callable[[ProgressEvent], None] | None, event: ProgressEvent) -> None:
    if callback is None:
        return
    try:
        callback(event)
    except Exception:  # a display hook must never end a training run
        log.exception("progress callback failed on %s", event)


def build_graph(pre: Preprocessor | ImagePreprocessor, family: Family, outputs: Outputs) -> bytes:
    """The Bundle graph: ``pre``'s inputs and nodes, then ``family``'s, then the output."""
    g = GraphBuilder("tandem")
    out = family.to_onnx(g, pre.to_onnx(g))
    g.output(out, outputs.graph_output, "double", [None, outputs.graph_width])
    graph: bytes = g.build().SerializeToString()
    return graph


def graph_output(graph: bytes, pre: Preprocessor, columns: dict[str, np.ndarray]) -> np.ndarray:
    """What a table model's graph outputs for coerced columns."""
    output: np.ndarray = make_session(graph).run(None, feed_of(pre, columns))[0]
    return output


def parity_of(
    graph: bytes, pre: Preprocessor, family: Family, columns: dict[str, np.ndarray], X: np.ndarray
) -> float:
    """Largest difference between the graph's and the in-memory model's predictions."""
    frozen = graph_output(graph, pre, columns)
    live = family.predict(X).reshape(frozen.shape)
    return float(np.max(np.abs(frozen - live))) if frozen.size else 0.0


def _tolerance(task: Task, y_train: np.ndarray) -> float:
    # probabilities are bounded, so their tolerance is absolute; values are compared in units
    # of the target's spread, as a float32 network cannot hold 1e-5 on a target near 150
    return PARITY_TOLERANCE * (
        1.0 if task == "classification" else max(1.0, float(np.std(y_train)))
    )


def freeze(
    pre: Preprocessor, family: Family, task: Task, test_columns: dict[str, np.ndarray],
    X_test: np.ndarray, y_train: np.ndarray,
) -> bytes:  # fmt: skip
    """The one graph of ``pre`` and ``family``, refused unless it reproduces the in-memory
    model on the test rows (as training freezes its pick)."""
    graph = build_graph(pre, family, Outputs(task))
    parity, tolerance = (
        parity_of(graph, pre, family, test_columns, X_test),
        _tolerance(task, y_train),
    )
    if not parity <= tolerance:
        raise TrainingError(
            f"the exported graph differs from the trained model by {parity:.2e} (> {tolerance:.1e}); "
            "nothing was registered"
        )
    return graph


def _freeze_best(
    leaderboard: list[Candidate],
    fitted: dict[str, Family],
    pre: Preprocessor,
    prep: _Prepared,
    test_columns: dict[str, np.ndarray],
    X_test: np.ndarray,
    y_train: np.ndarray,
) -> tuple[list[Candidate], Candidate, bytes, float]:
    """Export the best candidate whose graph reproduces it; a candidate whose export fails
    parity is marked on the leaderboard and the next best is tried."""
    tolerance = _tolerance(prep.task, y_train)
    failures: dict[str, str] = {}
    for candidate in sorted(
        (c for c in leaderboard if c.error is None), key=rank_key(prep.task), reverse=True
    ):
        family = fitted[candidate.family]
        try:
            graph = build_graph(pre, family, Outputs(prep.task))
            parity = parity_of(graph, pre, family, test_columns, X_test)
        except Exception as exc:  # an exporter's failure costs this candidate, not the run
            failures[candidate.family] = f"export failed: {exc}"
            continue
        if parity <= tolerance:
            board = [
                replace(c, chosen=c is candidate, error=failures.get(c.family, c.error))
                for c in leaderboard
            ]
            return board, candidate, graph, parity
        failures[candidate.family] = f"exported graph differs by {parity:.2e} (> {tolerance:.1e})"
    raise TrainingError(
        "no candidate could be exported faithfully: "
        + "; ".join(f"{k}: {v}" for k, v in failures.items())
        + "; nothing was registered"
    )


def train(
    data: str | Path | pa.Table | Any,
    *,
    target: str | None,
    name: str,
    task: Task | Literal["auto"] = "auto",
    model: ModelChoice = "auto",
    time_budget: float | None = None,
    seed: int = 0,
    ignore: Sequence[str] = (),
    params: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    parent: int | None = None,
    description: str = "",
    torch: TorchOptions | None = None,
    checkpoints: CheckpointOptions | None = None,
    kind: Kind = "auto",
) -> TrainResult:
    """Train, freeze and register a model.

    Args:
        data: CSV/Parquet/JSONL file or folder, a pyarrow Table or a pandas DataFrame.
        target: the column to predict; None learns from the rows alone (``model`` ``kmeans``,
            the default then, ``pca`` or ``autoencoder``: see :mod:`tandem.training.unsupervised`).
        name: the registry name; the new version is the next number under it.
        task: ``classification``, ``regression`` or ``auto`` (inferred from the target).
        model: one family, or ``auto`` to train every family and keep the best on validation.
        time_budget: seconds for fitting, shared among the candidates (None: no limit).
        seed: the same seed and data give the same split and the same model.
        ignore: columns that are not features (ids, timestamps).
        params: settings of the one family named by ``model``, e.g. ``{"hidden": 256}`` for
            ``mlp`` or ``{"max_rounds": 200}`` for ``gbdt`` (see each family's constructor).
        registry: where to register (default: ``TANDEM_HOME``).
        on_progress: called with a :class:`ProgressEvent` at each step.
        parent: the version this one was retrained from (lineage).
        description: a line kept with the version.
        torch: device, precision and engine (``local`` or ``ray``) of the ``mlp`` family.
        checkpoints: how often the ``mlp`` loop saves its state, and whether to resume from
            what an interrupted run of the same data and recipe saved (see
            :class:`CheckpointOptions`).
        kind: what the data is (see :func:`kind_of`): ``table`` (supervised on columns),
            ``image`` (an image folder, or a column of image bytes: a CNN, see
            :mod:`tandem.training.images`), ``text`` (one column of texts: the pretrained
            encoder and a head, see :mod:`tandem.training.text`), ``unsupervised`` (no
            target), ``recommender`` ((user, item) rows: see
            :mod:`tandem.training.recommend`), or ``auto`` to tell from the data (all but
            ``recommender``).

    Example:
        >>> result = train("weather.csv", target="rain", name="rain")  # doctest: +SKIP
        >>> result.version.ref  # doctest: +SKIP
        'rain:1'
    """
    validate_name(name)
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed}")
    if time_budget is not None and not time_budget > 0:
        raise ConfigError(f"time budget must be a positive number of seconds; got {time_budget}")
    if model != "auto" and model not in FAMILIES and model not in UNSUPERVISED:
        raise ConfigError(
            f"unknown model '{model}': choose auto, {', '.join([*FAMILIES, *UNSUPERVISED])}"
        )
    if kind not in KINDS:
        raise ConfigError(f"unknown kind '{kind}': choose {', '.join(KINDS)}")
    kind = kind_of(data, target, ignore) if kind == "auto" else kind
    run = Run(name=name, parent=parent, description=description, registry=registry,
              on_progress=on_progress)  # fmt: skip
    if kind == "recommender":
        if target is not None:
            raise ConfigError(
                "a recommender learns from (user, item) rows, not a target: leave out --target "
                "and name the columns with --param user=... --param item=..."
            )
        return train_recommender(data, run, model=model, seed=seed, params=params)
    if kind == "text":
        if target is None:
            raise ConfigError("a text model learns a label: name its column with --target")
        return train_text(
            data, run, target=target, model=model, task=task, seed=seed, ignore=ignore,
            params=params, time_budget=time_budget,
        )  # fmt: skip
    if kind == "image":
        return train_images(
            data, run, target=target, model=model, seed=seed, params=params, torch=torch,
            time_budget=time_budget,
        )  # fmt: skip
    if kind == "unsupervised" and target is not None:
        raise ConfigError("--kind unsupervised learns without a target: leave out --target")
    if target is None:
        if task != "auto":
            if task not in UNSUPERVISED_TASKS:
                raise ConfigError(
                    f"{task} needs a target: name the column to predict with --target"
                )
            if model not in ("auto", UNSUPERVISED_TASKS[task]):
                raise ConfigError(f"{model} does not do {task}; {UNSUPERVISED_TASKS[task]} does")
            model = UNSUPERVISED_TASKS[task]  # type: ignore[assignment]
        return train_unsupervised(
            data, run, model=model, seed=seed, ignore=ignore, params=params, torch=torch,
            time_budget=time_budget,
        )  # fmt: skip
    if model in UNSUPERVISED:
        raise ConfigError(
            f"{model} learns without a target: leave out --target (or choose a supervised model)"
        )
    if task not in ("auto", "classification", "regression"):
        raise ConfigError(f"unknown task '{task}': choose auto, classification or regression")
    names: list[str] = list(FAMILIES) if model == "auto" else [model]
    family_params = _check_params(model, params)
    saving = checkpoints or CheckpointOptions()
    if torch is not None and torch.engine == "ray":
        if saving.resume:
            raise ConfigError(
                "--resume works with the local engine; under --engine ray a run restarts whole"
            )
    elif torch is not None and "mlp" in names:
        resolve_hardware(torch)  # refuse fp16 without a GPU before reading any data
    total = len(names) + 3
    with Meter() as meter:
        epochs = EpochLog(meter)
        _notify(on_progress, ProgressEvent(0, total, "reading data"))
        table, source = _as_table(data)
        prep = _prepare(table, target, task, ignore)
        split = _split(prep, seed)
        data = _materialize(prep, split, seed)
        pre, parts, X, ys = data.preprocessor, data.columns, data.X, data.y
        recipe = {
            "target": target, "task": prep.task, "model": model, "time_budget": time_budget,
            "seed": seed, "ignore": list(ignore), "params": dict(params or {}),
        }  # fmt: skip
        run_folder = saving.folder_of(name, prep.fingerprint, recipe, torch)
        leaderboard, fitted = fit_candidates(
            names, X, ys, task=prep.task, n_classes=len(prep.classes), seed=seed, time_budget=time_budget,
            on_start=lambda i, fam: _notify(on_progress, ProgressEvent(i + 1, total, f"training {fam}")),
            params=family_params, on_fit=epochs.fit, torch=torch,
            checkpoint=lambda fam: saving.checkpointer(run_folder / fam, run_folder.name),
        )  # fmt: skip
        _notify(on_progress, ProgressEvent(total - 2, total, "freezing and verifying"))
        leaderboard, best, graph, parity = _freeze_best(
            leaderboard, fitted, pre, prep, parts["test"], X["test"], ys["train"]
        )
        family = fitted[best.family]
        outputs = Outputs(prep.task, tuple(prep.classes))
        reference = profile_columns(pre.columns, parts["train"])
        sample = sample_to_table(pre.columns, reference_sample(pre.columns, parts["train"]))
        reference_outputs = output_profile(output_columns(outputs, family.predict(X["validation"])))
    frozen = Frozen(
        outputs=outputs, target=target, inputs=tuple(pre.columns),
        leaderboard=leaderboard, best=best, graph=graph, parity=parity,
        fingerprint=prep.fingerprint, source=source, rows={k: len(v) for k, v in ys.items()},
        ignored=list(ignore), reference=reference, reference_outputs=reference_outputs,
        sample=sample, preprocessing=pre.state(), model=family.describe(), recipe=recipe,
    )  # fmt: skip
    result = finish(frozen, meter, epochs, run, pipeline=Pipeline(pre, family), split=split,
                    total=total)  # fmt: skip
    shutil.rmtree(run_folder, ignore_errors=True)  # registered: nothing left to resume
    with contextlib.suppress(OSError):  # the model's folder, if no other run of it waits
        run_folder.parent.rmdir()
    return result


Kind = Literal["auto", "table", "image", "text", "unsupervised", "recommender"]
KINDS: tuple[str, ...] = ("auto", "table", "image", "text", "unsupervised", "recommender")


def kind_of(data: Any, target: str | None, ignore: Sequence[str] = ()) -> Kind:
    """What ``data`` is, for ``kind="auto"``: ``image`` for a folder of images or a table
    with a column of bytes; ``text`` when, besides the target and ``ignore``, the one
    column is free text (see :func:`tandem.training.text.looks_like_text`); else ``table``
    with a target and ``unsupervised`` without one."""
    head: pa.Table | None = None
    if isinstance(data, str | Path):
        if is_image_folder(data):
            return "image"
        parts = list_parts(data) if Path(data).exists() else []
        head = _head(parts[0]) if parts else None
    elif isinstance(data, pa.Table):
        head = data
    elif type(data).__module__.startswith("pandas"):
        check_unique_columns([str(c) for c in data.columns], "the DataFrame")
        head = pa.Table.from_pandas(data.head(2000), preserve_index=False)
    if head is not None and image_column(head, target) is not None:
        return "image"
    if target is None:
        return "unsupervised"
    features = [
        c
        for c in (head.column_names if head is not None else [])
        if c != target and c not in ignore
    ]
    if len(features) == 1 and looks_like_text(head.column(features[0])):  # type: ignore[union-attr]
        return "text"
    return "table"


def _head(path: Path) -> pa.Table | None:
    """The first rows of a data file (for telling its kind), or None if it cannot be read
    (reading it in earnest names the problem)."""
    try:
        fmt = detect_format(path)
        if fmt == "parquet":
            batch = next(pq.ParquetFile(path).iter_batches(batch_size=2000), None)
            return None if batch is None else pa.Table.from_batches([batch])
        if fmt == "csv":
            import pyarrow.csv as pacsv

            with pacsv.open_csv(path) as reader:
                return pa.Table.from_batches([reader.read_next_batch()])
        return read_table(path).slice(0, 2000)
    except (pa.ArrowInvalid, OSError, StopIteration, DataError):
        return None


@dataclass(frozen=True, kw_only=True)
class Frozen:
    """Everything a training run of any kind hands to :func:`register_frozen`: the checked
    graph and what the manifest says about it."""

    outputs: Outputs
    target: str
    inputs: tuple[ColumnSpec, ...]
    leaderboard: list[Candidate]
    best: Candidate
    graph: bytes
    parity: float
    fingerprint: str
    source: str
    rows: dict[str, int]
    ignored: list[str]
    reference: dict[str, Any]
    reference_outputs: dict[str, Any]
    sample: pa.Table | None
    preprocessing: dict[str, Any]
    model: dict[str, Any]
    recipe: dict[str, Any]
    #: more files of the Bundle (a tokenizer), by name
    files: Mapping[str, bytes] = field(default_factory=dict)
    #: more top-level manifest sections (how inputs are encoded, how outputs are ranked)
    sections: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Run:
    """Where a training run registers and whom it tells: the same for every kind's flow."""

    name: str
    parent: int | None
    description: str
    registry: Registry | None
    on_progress: Callable[[ProgressEvent], None] | None

    def notify(self, step: int, total: int, message: str) -> None:
        _notify(self.on_progress, ProgressEvent(step, total, message))


def finish(
    frozen: Frozen, meter: Meter, epochs: EpochLog, run: Run, *, pipeline: Pipeline,
    split: Split, total: int,
) -> TrainResult:  # fmt: skip
    """Register ``frozen`` (see :func:`register_frozen`) and say what the run made: the end of
    every kind's training flow."""
    version = register_frozen(
        frozen, meter.profile, epochs, name=run.name, parent=run.parent,
        description=run.description, registry=run.registry, on_progress=run.on_progress,
        total=total,
    )  # fmt: skip
    return TrainResult(
        version, frozen.outputs.task, frozen.best.family, frozen.leaderboard, meter.profile,
        frozen.parity, frozen.rows, pipeline, split,
    )  # fmt: skip


def check_parity(frozen: np.ndarray, live: np.ndarray, tolerance: float, what: str) -> float:
    """The largest difference between the graph's and the in-memory model's outputs; a
    TrainingError (nothing registered) when it exceeds ``tolerance``."""
    finite = np.isfinite(frozen) & np.isfinite(live)
    if not np.array_equal(np.isfinite(frozen), np.isfinite(live)):
        raise TrainingError(
            f"the exported {what} and the trained one disagree on which outputs are finite; nothing was registered"
        )
    parity = float(np.max(np.abs(frozen[finite] - live[finite]))) if finite.any() else 0.0
    if not parity <= tolerance:
        raise TrainingError(
            f"the exported {what} differs from the trained one by {parity:.2e} "
            f"(> {tolerance:.1e}); nothing was registered"
        )
    return parity


def register_frozen(
    frozen: Frozen, profile: Profile, epochs: EpochLog, *, name: str, parent: int | None,
    description: str, registry: Registry | None,
    on_progress: Callable[[ProgressEvent], None] | None, total: int,
) -> ModelVersion:  # fmt: skip
    """Write the Bundle of ``frozen`` and register it as the next version of ``name``, with
    its training run in the Ledger; nothing is left behind if any step fails."""
    best = frozen.best
    details = {
        "metrics": {"validation": best.validation, "test": best.test},
        "leaderboard": [c.to_json() for c in frozen.leaderboard],
        "data": {
            "fingerprint": frozen.fingerprint,
            "source": frozen.source,
            "rows": frozen.rows,
            "ignored": frozen.ignored,
        },
        "reference": frozen.reference,
        "reference_outputs": frozen.reference_outputs,
        "preprocessing": frozen.preprocessing,
        "model": frozen.model,
        "training": {"profile": profile.to_json(), "parity_max_abs": frozen.parity},
        "recipe": frozen.recipe,
        **frozen.sections,
    }
    files = dict(frozen.files)
    if frozen.sample is not None:
        details["reference_sample"] = {"file": REFERENCE_SAMPLE, "rows": frozen.sample.num_rows}
        sink = pa.BufferOutputStream()
        pq.write_table(frozen.sample, sink, compression="zstd")
        files[REFERENCE_SAMPLE] = sink.getvalue().to_pybytes()
    out = frozen.outputs
    manifest = Manifest(
        name=name, version=0, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        task=out.task, family=best.family, target=frozen.target, inputs=frozen.inputs,
        classes=out.classes, width=out.width, threshold=out.threshold, details=details,
    )  # fmt: skip
    run = run_record("train", profile, sum(frozen.rows.values()), {
        "family": best.family, "rows": frozen.rows, "features": len(frozen.inputs),
        "seconds_by_family": {c.family: c.seconds for c in frozen.leaderboard},
        "epochs": epochs.fits,
    })  # fmt: skip

    def write(directory: Path, version: int) -> VersionRecord:
        digest = write_bundle(directory, replace(manifest, version=version), frozen.graph, files)
        return VersionRecord(
            digest=digest,
            task=out.task,
            family=best.family,
            metrics=best.test,
            data_fingerprint=frozen.fingerprint,
            parent_version=parent,
            description=description,
            runs=(run,),
        )

    _notify(on_progress, ProgressEvent(total - 1, total, "registering"))
    with contextlib.nullcontext(registry) if registry is not None else Registry() as reg:
        version = reg.register(name, write)
    _notify(on_progress, ProgressEvent(total, total, f"registered {version.ref}"))
    return version


def test_split(manifest: Manifest) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The test split a version was scored on, rebuilt from its recipe: the training data
    file (if it is still there, unchanged) split again with the recorded seed.

    Returns:
        The input columns (coerced as in training) and the targets (class codes into
        ``manifest.classes``, or values).

    Raises:
        DataError: the file is gone or changed since (its fingerprint differs).
    """
    prep, seed = _recipe_data(manifest, "pass labeled rows with --data FILE")
    split = _split(prep, seed)
    return {c: v[split.test] for c, v in prep.columns.items()}, prep.y[split.test]


@dataclass(frozen=True)
class Rebuilt:
    """A version's training data as its training run saw it: split again with the recorded
    seed, preprocessed by the same (refitted, identical) preprocessor. Each mapping is keyed
    by ``train``, ``validation`` and ``test``."""

    preprocessor: Preprocessor
    #: input columns, coerced as in training
    columns: dict[str, dict[str, np.ndarray]]
    #: features as the model sees them
    X: dict[str, np.ndarray]
    #: class codes into ``manifest.classes``, or values
    y: dict[str, np.ndarray]
    #: the recipe's seed, which drew the split and seeded the models
    seed: int


def rebuild(manifest: Manifest, why: str) -> Rebuilt:
    """Everything a retraining step (pruning's fine-tuning, distillation) needs of a version's
    data, rebuilt from its recipe; ``why`` ends the error raised when that cannot be done."""
    prep, seed = _recipe_data(manifest, why)
    data = _materialize(prep, _split(prep, seed), seed)
    if json.loads(json.dumps(data.preprocessor.state())) != manifest.details.get("preprocessing"):
        raise DataError(
            f"the preprocessing refitted on {manifest.name}:{manifest.version}'s training rows "
            "differs from the one it froze (trained by another tandem version?): retrain it "
            "with this one first"
        )
    return data


def _materialize(prep: _Prepared, split: Split, seed: int) -> Rebuilt:
    """The splits' columns and targets, and the preprocessor fitted on the train split."""
    rows_of = {"train": split.train, "validation": split.validation, "test": split.test}
    columns = {k: {c: v[i] for c, v in prep.columns.items()} for k, i in rows_of.items()}
    pre = Preprocessor(prep.specs).fit(columns["train"])
    return Rebuilt(
        pre,
        columns,
        {k: pre.transform(v) for k, v in columns.items()},
        {k: prep.y[i] for k, i in rows_of.items()},
        seed,
    )


def _recipe_data(manifest: Manifest, why: str) -> tuple[_Prepared, int]:
    """The version's data, prepared as in training if its file is unchanged, and the seed
    that split it."""
    source = manifest.details.get("data", {}).get("source", "")
    recipe = manifest.details.get("recipe", {})
    ref = f"{manifest.name}:{manifest.version}"
    if not source or not Path(source).exists():
        raise DataError(
            f"the data {ref} was trained on ({source or 'not a file'}) is not here: {why}"
        )
    prep = _prepare(read_table(source), manifest.target, manifest.task, recipe.get("ignore", ()))
    if prep.fingerprint != manifest.details.get("data", {}).get("fingerprint"):
        raise DataError(
            f"{source} changed since {ref} was trained on it (its fingerprint differs): {why}"
        )
    return prep, int(recipe.get("seed", 0))


def _split(prep: _Prepared, seed: int) -> Split:
    """Train / validation / test rows: stratified for classes, seeded."""
    return split_indices(
        len(prep.y), labels=prep.y if prep.task == "classification" else None, seed=seed
    )


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    """Checkpoints of the torch loop during ``train``.

    They are kept under ``$TANDEM_HOME/checkpoints/<name>/<run key>/<family>/``, where the run
    key hashes the data fingerprint, the recipe and the torch options, so ``resume`` picks up
    only the run that was interrupted, and are removed once the version is registered.
    ``every_steps`` / ``every_s``: save after this many optimizer steps / seconds (either,
    both, or neither, which turns checkpoints off)."""

    every_steps: int | None = None
    every_s: float | None = 60.0
    resume: bool = False
    root: Path | None = None

    def folder_of(
        self, name: str, data: str, recipe: Mapping[str, Any], torch: TorchOptions | None
    ) -> Path:
        key = json.dumps([data, recipe, asdict(torch or TorchOptions())], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return (self.root or Settings.from_env().home / "checkpoints") / name / digest

    def checkpointer(self, folder: Path, key: str) -> Checkpointer | None:
        if self.every_steps is None and self.every_s is None and not self.resume:
            return None
        found = (folder / CHECKPOINT_FILE).exists()
        if found and not self.resume:
            log.warning(
                "%s holds a checkpoint of this run; starting over (resume to continue)", folder
            )
        return Checkpointer(folder, self.every_steps, self.every_s, resume=self.resume, key=key)


def _check_params(model: str, params: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``params`` as {family: kwargs}, refused unless every key is a setting of that family."""
    if not params:
        return {}
    if model == "auto":
        raise ConfigError(
            "params apply to one family: pass model='linear', 'gbdt' or 'mlp' with them"
        )
    configured(FAMILIES[model], model, params)  # refused before any data is read
    return {model: dict(params)}
