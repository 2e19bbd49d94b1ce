"""A batch job: score files of rows with a registered model, chunk by chunk, resumably.

    inputs ──► chunks (sources) ──► Scorer: check rows, Predictor ──► settle ──► parts + journal ──► output
               read-ahead thread     this thread (local engine)       policy     write-behind thread
                                     or Ray Data actors (ray engine)

While the Predictor scores chunk k, a thread reads chunk k+1 and another writes chunk k-1
(Arrow's readers and writers and ONNX Runtime all release the GIL), so memory holds about
three chunks plus the model. The Predictor is the one ``tandem predict`` and the server use.
Both engines cut the job into the same chunks and settle bad rows the same way, so they
write the same parts, and either can resume the other's journal.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tandem.batch.journal import Done, Journal, rejects_path, work_folder
from tandem.batch.rows import check_rows, check_types
from tandem.batch.sources import Chunk, InputFile, chunks, list_inputs, read_schema
from tandem.bundle import Bundle, load_bundle
from tandem.bundle.manifest import split_kinds
from tandem.config import Settings
from tandem.data.readers import FORMATS
from tandem.errors import ConfigError, DataError, UsageError
from tandem.inference.predictor import Predictor
from tandem.ledger.hardware import usable_cores
from tandem.ledger.meter import Meter, Profile
from tandem.ledger.records import run_record
from tandem.monitoring.predictions import Layout, LogOptions, PredictionLog, batch_rows
from tandem.registry import ModelVersion, Registry

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "ON_ERROR",
    "BatchOptions",
    "BatchProgress",
    "BatchResult",
    "run_batch",
]

#: rows per chunk, the unit of reading, writing and resume (benchmarks/bench_batch.py)
DEFAULT_CHUNK_ROWS = 65_536
#: rows per call of the model within a chunk. Measured on 2 cores (Predictor from an Arrow
#: table, 2 threads): W1 452k rows/s at 1,024, 450k at 4,096, 377k at 32,768; the 200-tree
#: GBDT 167k, 179k, 194k. And ONNX Runtime's arena grows with the batch: one 65,536-row
#: forward pass of W1 took 200 MB more, twice 360 MB
COMPUTE_ROWS = 4_096
ON_ERROR = ("fail", "skip", "null")
ENGINES = ("local", "ray")
OUTPUT_FORMATS = ("parquet", "csv", "jsonl")
REJECTS_SCHEMA = pa.schema(
    [("row", pa.int64()), ("file", pa.string()), ("file_row", pa.int64()),
     ("column", pa.string()), ("value", pa.string()), ("reason", pa.string())]
)  # fmt: skip


@dataclass(frozen=True)
class BatchOptions:
    """What to score and how.

    Attributes:
        inputs: files or folders of CSV, Parquet or JSON Lines (one format).
        output: the file to write.
        format: ``parquet``, ``csv`` or ``jsonl``; None takes the output's suffix, else Parquet.
        keep: input columns copied to the output beside the predictions (an id, say).
        on_error: a row that cannot be scored (text in a numeric column, a line that is not
            JSON): ``fail`` stops the job naming it; ``skip`` leaves it out of the output and
            ``null`` keeps it with empty predictions, both listing it in a rejects file.
        resume: finish the unfinished job for this output.
        overwrite: replace an existing output (or an unfinished job) instead of refusing.
        chunk_rows: rows per chunk (the unit of memory, progress and resume).
        threads: one ONNX Runtime session with this many intra-op threads; None: one
            single-threaded session per core, each scoring its own slices (measured faster).
        engine: ``local`` (this process) or ``ray`` (Ray Data; :mod:`tandem.batch.ray`).
        ray_address: the Ray cluster for ``engine="ray"``; None starts a local instance.
        log_sample: the share of rows kept in the prediction log for monitoring (0: none).
            A sample, not every row: the input is already on disk, and drift needs a sample.
            The local engine logs; on Ray the rows are read by the workers and are not logged.
    """

    inputs: Sequence[str | Path]
    output: str | Path
    format: str | None = None
    keep: Sequence[str] = ()
    on_error: str = "fail"
    resume: bool = False
    overwrite: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    threads: int | None = None
    engine: str = "local"
    ray_address: str | None = None
    log_sample: float = 0.1


@dataclass(frozen=True)
class BatchProgress:
    """Where a job is: rows scored so far (``new`` of them by this run, the rest by the run
    it resumed), and the share of the input read (0..1)."""

    rows: int
    new: int
    done: float
    total_rows: int | None


@dataclass
class BatchResult:
    model: str
    output: Path
    rejects: Path | None
    rows_in: int
    rows_out: int
    rejected: int
    chunks: int
    resumed_chunks: int
    profile: Profile
    engine: str = "local"
    #: --resume found the output written and no unfinished job: nothing was done
    complete_before: bool = False

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.profile.wall_seconds if self.profile.wall_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "output": str(self.output),
            "rejects": None if self.rejects is None else str(self.rejects),
            "rows_in": self.rows_in, "rows_out": self.rows_out, "rejected": self.rejected,
            "chunks": self.chunks, "resumed_chunks": self.resumed_chunks, "engine": self.engine,
            "rows_per_second": self.rows_per_second, "complete_before": self.complete_before,
            **self.profile.to_json(),
        }  # fmt: skip


@dataclass(frozen=True)
class _Plan:
    """Everything checked before any work."""

    version: ModelVersion
    bundle: Bundle  # loaded and verified once, for the checks and for scoring
    inputs: list[InputFile]
    output: Path
    format: str
    keep: list[str]
    keep_schema: pa.Schema
    job: dict[str, Any]


def run_batch(
    ref: str,
    options: BatchOptions,
    *,
    registry: Registry | None = None,
    on_progress: Callable[[BatchProgress], None] | None = None,
) -> BatchResult:
    """Score ``options.inputs`` with model ``ref`` into ``options.output``.

    Everything that can be checked is checked before any work: the options, the output path,
    every input's columns and types. The job is recorded in the registry against the model
    version.

    Raises:
        UsageError: bad options, an existing output (without ``overwrite``/``resume``), a
            missing column or wrong type (SchemaError), a bad row with ``on_error="fail"``
            (DataError); nothing is written then, except the finished chunks of a job that
            ``resume`` can finish.
    """
    own = registry is None
    reg = registry or Registry()
    try:
        with Meter() as meter:
            plan = _plan(reg, ref, options)
            if options.resume and plan.output.exists() and not Journal(plan.output).exists():
                return BatchResult(plan.version.ref, plan.output, None, 0, 0, 0, 0, 0,
                                   meter.read(), complete_before=True)  # fmt: skip
            result = _run(plan, options, meter, on_progress, reg.settings)
        result.profile = meter.profile
        reg.record_run(
            plan.version.name,
            plan.version.version,
            run_record("batch", result.profile, result.rows_in, result.to_json()),
        )
        return result
    finally:
        if own:
            reg.close()


# -- the checks before any work ------------------------------------------------------------------


def _plan(reg: Registry, ref: str, options: BatchOptions) -> _Plan:
    if options.on_error not in ON_ERROR:
        raise ConfigError(
            f"--on-error must be one of {', '.join(ON_ERROR)}; got '{options.on_error}'"
        )
    if options.engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}; got '{options.engine}'")
    if options.ray_address is not None and options.engine != "ray":
        raise UsageError("--ray-address is for --engine ray")
    if options.chunk_rows < 1:
        raise ConfigError(f"chunk rows must be at least 1; got {options.chunk_rows}")
    LogOptions(sample=options.log_sample)  # refuses a share outside 0..1, naming it
    if options.threads is not None and options.threads < 1:
        raise ConfigError(f"threads must be at least 1; got {options.threads}")
    if options.resume and options.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: choose one")
    output = Path(options.output).absolute()
    fmt = _output_format(output, options.format)
    if not output.parent.is_dir():
        raise UsageError(f"the folder of --output '{output}' does not exist: create it first")
    if output.is_dir():
        raise UsageError(f"--output '{output}' is a folder: give a file path")
    version = reg.get(ref)
    inputs = list_inputs(options.inputs)
    if any(f.path == output for f in inputs):
        raise UsageError(f"--output '{output}' is also an input: write somewhere else")
    bundle = load_bundle(version.path, expected_digest=version.digest)
    manifest = bundle.manifest
    specs = list(manifest.inputs)
    predicted = manifest.outputs.columns
    keep = list(dict.fromkeys(options.keep))
    clash = [k for k in keep if k in predicted]
    if clash:
        raise UsageError(
            f"--keep {clash} would collide with the prediction column(s) {predicted}: rename "
            "the input column first"
        )
    keep_schema: pa.Schema | None = None
    for f in inputs:
        schema = read_schema(f)
        check_types(specs, schema, f"input '{f.path}'", typed=f.format == "parquet")
        lacking = [k for k in keep if k not in schema.names]
        if lacking:
            raise UsageError(
                f"--keep names column(s) {lacking} that input '{f.path}' does not have; it has "
                f"{schema.names}"
            )
        if keep_schema is None:
            keep_schema = pa.schema([schema.field(k) for k in keep])
    assert keep_schema is not None
    job = {
        "model": version.ref, "digest": version.digest,
        "inputs": [f.to_json() for f in inputs], "format": fmt, "keep": keep,
        "on_error": options.on_error, "chunk_rows": options.chunk_rows,
    }  # fmt: skip
    return _Plan(version, bundle, inputs, output, fmt, keep, keep_schema, job)


def _output_format(output: Path, given: str | None) -> str:
    by_suffix = FORMATS.get(output.suffix.lower())
    if given is not None:
        if given not in OUTPUT_FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}; got '{given}'")
        if by_suffix is not None and by_suffix != given:
            raise UsageError(
                f"--format {given} contradicts the --output suffix '{output.suffix}': make them agree"
            )
        return given
    return by_suffix or "parquet"


# -- the local engine ------------------------------------------------------------------------------


def _start_journal(plan: _Plan, options: BatchOptions) -> Journal:
    journal = Journal(plan.output)
    if options.resume and journal.exists():
        journal.resume(plan.job)
        return journal
    if journal.exists() and not options.overwrite:
        raise UsageError(
            f"an unfinished job for '{plan.output}' exists ({work_folder(plan.output).name}): add "
            "--resume to finish it, or --overwrite to start over"
        )
    if plan.output.exists() and not (options.overwrite or options.resume):
        raise UsageError(
            f"'{plan.output}' already exists: choose a new --output, or add --overwrite to replace it"
        )
    journal.begin(plan.job)
    return journal


def _run(
    plan: _Plan,
    options: BatchOptions,
    meter: Meter,
    on_progress: Callable[[BatchProgress], None] | None,
    settings: Settings,
) -> BatchResult:
    journal = _start_journal(plan, options)
    keeps_rejects = options.on_error != "fail"
    scorer: Scorer | None = None
    predictions: _BatchLog | None = None
    try:
        # on Ray the actors score; here the scorer only says what to read and write
        threads = 1 if options.engine == "ray" else options.threads
        scorer = Scorer(plan.bundle, plan.keep, threads=threads)
        resumed = len(journal.done)
        if not journal.ended:
            if options.engine == "ray":
                from tandem.batch.ray_engine import scored_on_ray

                scored = scored_on_ray(plan, journal.done, scorer, options)
            else:
                scored = _scored_here(plan, journal.done, scorer, options.chunk_rows)
            journal.stream_output(plan.format, scorer.schema(plan.keep_schema))
            if options.log_sample > 0 and options.engine == "local":
                predictions = _BatchLog(plan, scorer, options.log_sample, settings)
            _write_all(plan, journal, scored, scorer, options.on_error, on_progress, predictions)
            journal.end()
        schema = scorer.schema(plan.keep_schema)
        journal.finish(plan.format, schema, rejects=REJECTS_SCHEMA if keeps_rejects else None)
    finally:
        journal.close()
        if scorer is not None:
            scorer.close()
        if predictions is not None:
            predictions.close()
    done = journal.done
    return BatchResult(
        model=plan.version.ref, output=plan.output,
        rejects=rejects_path(plan.output) if keeps_rejects else None,
        rows_in=sum(d.rows_in for d in done), rows_out=sum(d.rows_out for d in done),
        rejected=sum(d.rejects for d in done), chunks=len(done), resumed_chunks=resumed,
        profile=meter.read(), engine=options.engine,
    )  # fmt: skip


#: a chunk of the job and its rows scored (:meth:`Scorer.score`)
Scored = tuple[Chunk, pa.Table]


def _scored_here(
    plan: _Plan, done: Sequence[Done], scorer: Scorer, chunk_rows: int
) -> Iterator[Scored]:
    """The local engine: chunks read one ahead in a thread, scored in this one."""
    stream = chunks(plan.inputs, chunk_rows, columns=scorer.columns_read, text_columns=scorer.numeric,
                    done=[(d.file, d.rows_in) for d in done])  # fmt: skip
    with ThreadPoolExecutor(1, "tandem-read") as reader:
        ahead: Future[Chunk | None] = reader.submit(next, stream, None)
        while (chunk := ahead.result()) is not None:
            ahead = reader.submit(next, stream, None)
            yield chunk, scorer.score(chunk.batch, chunk.bad)


def _write_all(
    plan: _Plan,
    journal: Journal,
    scored: Iterator[Scored],
    scorer: Scorer,
    on_error: str,
    on_progress: Callable[[BatchProgress], None] | None,
    predictions: _BatchLog | None = None,
) -> None:
    """Settle each scored chunk by the error policy and store it; a thread writes chunk k
    while chunk k+1 is scored. A sample of the scored rows goes to the prediction log."""
    inputs = plan.inputs
    sizes = [max(f.size, 1) for f in inputs]
    total_size = sum(sizes)
    total_rows = (
        sum(f.rows or 0 for f in inputs) if all(f.rows is not None for f in inputs) else None
    )
    row = first = sum(d.rows_in for d in journal.done)  # the job's number of the next row
    with ThreadPoolExecutor(1, "tandem-write") as writer:
        behind: Future[None] | None = None
        for chunk, rows in scored:
            output, rejects = settle(rows, on_error, row, chunk.start, inputs[chunk.file].path)
            done = Done(chunk.index, chunk.file, chunk.start, chunk.rows, output.num_rows,
                        0 if rejects is None else rejects.num_rows)  # fmt: skip
            if behind is not None:
                behind.result()  # one write in flight at most: memory stays bounded
            behind = writer.submit(journal.write, done, output, rejects)
            if predictions is not None:
                predictions.add(row, scorer.last_features, rows)
            row += chunk.rows
            if on_progress is not None:
                read = sum(sizes[: chunk.file]) + chunk.read * sizes[chunk.file]
                on_progress(BatchProgress(row, row - first, read / total_size, total_rows))
        if behind is not None:
            behind.result()


#: columns :meth:`Scorer.score` adds to say why a row could not be scored (null: it was)
WHY = ("__tandem_column", "__tandem_value", "__tandem_reason")


class _BatchLog:
    """A job's sample of scored rows, for the prediction log: one id for the run, the job's
    row numbers as rows; rows that could not be scored are left out."""

    def __init__(self, plan: _Plan, scorer: Scorer, sample: float, settings: Settings) -> None:
        version = plan.version
        self.layout = Layout.of(
            version.name, version.version, scorer.specs, scorer.outputs,
            scorer.predictor,
        )  # fmt: skip
        self.specs = scorer.specs
        self.job_id = f"batch-{uuid.uuid4().hex[:12]}"
        self.rng = np.random.default_rng()
        self.log = PredictionLog("batch", LogOptions(sample=sample), settings=settings)

    def add(self, first_row: int, inputs: pa.Table, scored: pa.Table) -> None:
        keep = self.rng.random(scored.num_rows) < self.log.options.sample
        keep &= scored.column(WHY[2]).is_null().to_numpy(zero_copy_only=False)
        if keep.any():
            table = batch_rows(
                self.layout, self.specs, self.job_id, first_row, inputs, scored, keep
            )
            self.log.add_table(self.layout, table)

    def close(self) -> None:
        self.log.close()


#: decoded output columns that are not float64 (the label's type follows the classes)
_OUTPUT_TYPES = {"cluster": pa.int64(), "anomaly": pa.bool_()}


class Scorer:
    """Rows in; the same rows out as the kept columns, the predictions and, for rows that
    could not be scored, why (their predictions null). The local engine runs one here; the
    Ray engine runs one in each actor and settles the rows here, so both apply one policy."""

    def __init__(self, bundle: Bundle, keep: Sequence[str], *, threads: int | None) -> None:
        # threads=None: one single-threaded session per core, each scoring its own slices of
        # a chunk, rather than one session whose threads split each operator. Measured on 2
        # cores (W1, 2M rows of Parquet, reading and writing alongside): see COMPUTE_ROWS.
        sessions = usable_cores() if threads is None else 1
        per_session = 1 if threads is None else threads
        self.predictors = [
            Predictor(bundle, threads=per_session, spin=False) for _ in range(sessions)
        ]
        self.predictor = self.predictors[0]
        self._pool = ThreadPoolExecutor(sessions - 1, "tandem-score") if sessions > 1 else None
        self.keep = list(keep)
        self.specs = list(self.predictor.manifest.inputs)
        self.numeric = [s.name for s in split_kinds(self.specs)[0]]
        self.columns_read = list(dict.fromkeys([*(s.name for s in self.specs), *self.keep]))
        self.outputs = self.predictor.output_columns
        classes = self.predictor.manifest.classes
        self.label_type = pa.array(np.asarray(classes)).type if classes else None
        #: the signature's columns of the chunk scored last, read as numbers or text
        self.last_features = pa.table({})

    def schema(self, keep: pa.Schema) -> pa.Schema:
        """The output's columns: those kept, then the predictions."""
        return pa.schema([*keep, *(pa.field(c, self._type(c)) for c in self.outputs)])

    def _type(self, name: str) -> pa.DataType:
        if name == "label" and self.label_type is not None:
            return self.label_type
        if self.predictor.manifest.task == "ranking" and name.startswith("item_"):
            return pa.string()  # catalog ids are kept as text
        return _OUTPUT_TYPES.get(name, pa.float64())

    def _predict(self, features: pa.Table) -> dict[str, np.ndarray]:
        n = features.num_rows
        if n <= COMPUTE_ROWS:
            if not n:
                return {c: np.empty(0) for c in self.outputs}
            return self.predictor.predict_columns(features)
        slices = [features.slice(lo, COMPUTE_ROWS) for lo in range(0, n, COMPUTE_ROWS)]
        if self._pool is None:
            parts = [self.predictor.predict_columns(s) for s in slices]
        else:  # slice i goes to session i mod k; this thread runs session 0's share
            k = len(self.predictors)
            others = [
                self._pool.submit(_run_slices, self.predictors[j], slices[j::k])
                for j in range(1, k)
            ]
            shares = [_run_slices(self.predictor, slices[0::k]), *(f.result() for f in others)]
            parts = [shares[i % k][i // k] for i in range(len(slices))]
        return {c: np.concatenate([p[c] for p in parts]) for c in self.outputs}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def score(
        self, batch: pa.RecordBatch | pa.Table, read_bad: Sequence[tuple[int, str]] = ()
    ) -> pa.Table:
        checked = check_rows(self.specs, batch, read_bad)
        bad = checked.bad
        n = batch.num_rows
        features = self.last_features = pa.table(checked.columns)
        good: np.ndarray | None = None
        if bad:
            mask = np.ones(n, dtype=bool)
            mask[list(bad)] = False
            good = np.flatnonzero(mask)
            features = features.take(good)
        decoded = self._predict(features)
        out: dict[str, Any] = {k: batch.column(k) for k in self.keep}
        for name in self.outputs:
            if good is None:
                out[name] = pa.array(decoded[name], type=self._type(name))
            else:
                out[name] = _scatter(decoded[name], good, n, self._type(name))
        rows = sorted(bad)
        for j, name in enumerate(WHY):
            if not bad:
                out[name] = pa.nulls(n, pa.string())
                continue
            values: list[str | None] = [None] * n
            for i in rows:
                values[i] = bad[i][j] or None
            out[name] = pa.array(values, pa.string())
        return pa.table(out)


def _run_slices(predictor: Predictor, slices: Sequence[pa.Table]) -> list[dict[str, np.ndarray]]:
    return [predictor.predict_columns(s) for s in slices]


def settle(
    scored: pa.Table, on_error: str, row: int, start: int, path: Path
) -> tuple[pa.Table, pa.Table | None]:
    """Apply the error policy to one chunk's scored rows: (output rows, rejected rows or None).

    ``row`` is the job's number of the chunk's first row, ``start`` its number in ``path``.
    """
    reason = scored.column(WHY[2])
    output = scored.drop(list(WHY))
    if reason.null_count == scored.num_rows:
        return output, None
    bad = np.flatnonzero(np.asarray(pc.is_valid(reason).to_numpy(zero_copy_only=False)))
    if on_error == "fail":
        i = int(bad[0])
        raise DataError(
            f"row {row + i:,} of the job (row {start + i:,} of '{path}', 0-based) cannot be "
            f"scored: {reason[i].as_py()}. Fix it, or run with --on-error skip (leave such rows "
            "out) or null (keep them with empty predictions); both list them in a rejects file"
        )
    picked = scored.take(pa.array(bad))
    rejects = pa.table(
        {
            "row": pa.array(bad + row, pa.int64()),
            "file": pa.array([str(path)] * len(bad), pa.string()),
            "file_row": pa.array(bad + start, pa.int64()),
            "column": picked.column(WHY[0]),
            "value": picked.column(WHY[1]),
            "reason": picked.column(WHY[2]),
        },
        schema=REJECTS_SCHEMA,
    )
    if on_error == "skip":
        output = output.filter(pc.is_null(reason))
    return output, rejects


def _scatter(values: np.ndarray, rows: np.ndarray, n: int, type_: pa.DataType) -> pa.Array:
    """``values`` at ``rows`` of an array of ``n``, null elsewhere."""
    full = np.zeros(n, dtype=values.dtype) if values.dtype != object else np.full(n, None)
    full[rows] = values
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return pa.array(full, type=type_, mask=mask)
