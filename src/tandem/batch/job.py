"""A batch job: score files of rows with a registered model, chunk by chunk, resumably.

    inputs ──► chunks (sources) ──► check rows (rows) ──► Predictor ──► parts + journal ──► output
               read-ahead thread      this thread          this thread   write-behind thread

Three stages overlap: while the Predictor scores chunk k, a thread reads chunk k+1 and another
writes chunk k-1 (Arrow's readers and writers and ONNX Runtime all release the GIL), so
memory holds about three chunks plus the model. The Predictor is the one ``tandem predict``
and the server use: for the same rows the numbers are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tandem.batch.journal import Done, Journal, rejects_path, work_folder
from tandem.batch.rows import check_rows, check_types
from tandem.batch.sources import Chunk, InputFile, chunks, list_inputs, read_schema
from tandem.bundle import load_bundle
from tandem.data.readers import FORMATS
from tandem.errors import ConfigError, DataError, UsageError
from tandem.inference.predictor import Predictor
from tandem.ledger.meter import Meter, Profile
from tandem.registry import ModelVersion, Registry

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "ON_ERROR",
    "BatchOptions",
    "BatchProgress",
    "BatchResult",
    "run_batch",
]

#: rows per chunk; chosen by measurement (benchmarks/bench_batch.py)
DEFAULT_CHUNK_ROWS = 65_536
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
        threads: ONNX Runtime intra-op threads; None lets it use every core.
        engine: ``local`` (this process) or ``ray`` (Ray Data; :mod:`tandem.batch.ray`).
        ray_address: the Ray cluster for ``engine="ray"``; None starts a local instance.
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
            result = _run_local(plan, options, meter, on_progress)
        result.profile = meter.profile
        reg.record_run(
            plan.version.name, plan.version.version, "batch",
            wall_seconds=result.profile.wall_seconds, cpu_seconds=result.profile.cpu_seconds,
            peak_rss_mb=result.profile.peak_rss_mb, rows=result.rows_in,
            details=result.to_json(),
        )  # fmt: skip
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
    manifest = load_bundle(version.path, expected_digest=version.digest).manifest
    specs = list(manifest.inputs)
    predicted = _prediction_columns(manifest.classes)
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
    return _Plan(version, inputs, output, fmt, keep, keep_schema, job)


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


def _prediction_columns(classes: Sequence[Any] | None) -> list[str]:
    return ["label", *(f"proba_{c}" for c in classes)] if classes else ["prediction"]


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


def _run_local(
    plan: _Plan,
    options: BatchOptions,
    meter: Meter,
    on_progress: Callable[[BatchProgress], None] | None,
) -> BatchResult:
    journal = _start_journal(plan, options)
    try:
        bundle = load_bundle(plan.version.path, expected_digest=plan.version.digest)
        predictor = Predictor(bundle, threads=options.threads)
        scorer = _Scorer(predictor, plan, options.on_error)
        resumed = len(journal.done)
        if not journal.ended:
            _score_all(plan, journal, scorer, options.chunk_rows, on_progress)
            journal.end()
        keeps_rejects = options.on_error != "fail"
        journal.finish(
            plan.format, scorer.schema(), rejects=REJECTS_SCHEMA if keeps_rejects else None
        )
    finally:
        journal.close()
    done = journal.done
    return BatchResult(
        model=plan.version.ref, output=plan.output,
        rejects=rejects_path(plan.output) if keeps_rejects else None,
        rows_in=sum(d.rows_in for d in done), rows_out=sum(d.rows_out for d in done),
        rejected=sum(d.rejects for d in done), chunks=len(done), resumed_chunks=resumed,
        profile=meter.read(),
    )  # fmt: skip


def _score_all(
    plan: _Plan,
    journal: Journal,
    scorer: _Scorer,
    chunk_rows: int,
    on_progress: Callable[[BatchProgress], None] | None,
) -> None:
    inputs = plan.inputs
    sizes = [max(f.size, 1) for f in inputs]
    total_size = sum(sizes)
    total_rows = (
        sum(f.rows or 0 for f in inputs) if all(f.rows is not None for f in inputs) else None
    )
    columns = list(dict.fromkeys([*scorer.names, *plan.keep]))
    text = scorer.numeric if plan.inputs[0].format == "csv" else []
    stream = chunks(inputs, chunk_rows, columns=columns, text_columns=text,
                    done=[(d.file, d.rows_in) for d in journal.done])  # fmt: skip
    row = first = sum(d.rows_in for d in journal.done)  # the job's number of the next row

    with (
        ThreadPoolExecutor(1, "tandem-read") as reader,
        ThreadPoolExecutor(1, "tandem-write") as writer,
    ):
        ahead: Future[Chunk | None] = reader.submit(next, stream, None)
        behind: Future[None] | None = None
        while (chunk := ahead.result()) is not None:
            ahead = reader.submit(next, stream, None)
            output, rejects = scorer.score(chunk, row, inputs[chunk.file].path)
            done = Done(chunk.index, chunk.file, chunk.start, chunk.rows, output.num_rows,
                        0 if rejects is None else rejects.num_rows)  # fmt: skip
            if behind is not None:
                behind.result()  # one write in flight at most: memory stays bounded
            behind = writer.submit(journal.write, done, output, rejects)
            row += chunk.rows
            if on_progress is not None:
                read = sum(sizes[: chunk.file]) + chunk.read * sizes[chunk.file]
                on_progress(BatchProgress(row, row - first, read / total_size, total_rows))
        if behind is not None:
            behind.result()


class _Scorer:
    """One chunk in, its output rows and rejected rows out."""

    def __init__(self, predictor: Predictor, plan: _Plan, on_error: str) -> None:
        self.predictor = predictor
        self.specs = list(predictor.manifest.inputs)
        self.names = [s.name for s in self.specs]
        self.numeric = [s.name for s in self.specs if s.kind != "categorical"]
        self.plan = plan
        self.on_error = on_error
        self.columns = predictor.output_columns
        classes = predictor.manifest.classes
        self.label_type = pa.array(np.asarray(classes)).type if classes else None

    def schema(self) -> pa.Schema:
        fields = list(self.plan.keep_schema)
        if self.label_type is not None:
            fields.append(pa.field("label", self.label_type))
            fields += [pa.field(c, pa.float64()) for c in self.columns[1:]]
        else:
            fields.append(pa.field("prediction", pa.float64()))
        return pa.schema(fields)

    def score(self, chunk: Chunk, row: int, path: Path) -> tuple[pa.Table, pa.Table | None]:
        checked = check_rows(self.specs, chunk.batch, chunk.bad)
        bad = checked.bad
        n = chunk.rows
        good: np.ndarray | None = None  # row numbers scored, when not all
        features = pa.table(checked.columns)
        if bad:
            if self.on_error == "fail":
                i = min(bad)
                reason = bad[i][2]
                raise DataError(
                    f"row {row + i:,} of the job (row {chunk.start + i:,} of '{path}', 0-based) "
                    f"cannot be scored: {reason}. Fix it, or run with --on-error skip (leave such "
                    "rows out) or null (keep them with empty predictions); both list them in a "
                    "rejects file"
                )
            mask = np.ones(n, dtype=bool)
            mask[list(bad)] = False
            good = np.flatnonzero(mask)
            features = features.take(good)
        decoded = (
            self.predictor.predict_columns(features)
            if features.num_rows
            else {c: np.empty(0) for c in self.columns}
        )
        keep = chunk.batch.select(self.plan.keep) if self.plan.keep else None
        out: dict[str, Any] = {}
        if keep is not None:
            kept = pa.Table.from_batches([keep])
            if good is not None and self.on_error == "skip":
                kept = kept.take(good)
            out.update((k, kept.column(k)) for k in self.plan.keep)
        for name in self.columns:
            values = decoded[name]
            if good is not None and self.on_error == "null":
                out[name] = _scatter(values, good, n, self._type(name))
            else:
                out[name] = pa.array(values, type=self._type(name))
        output = pa.table(out)
        if not bad:
            return output, None
        return output, _rejects(bad, row, chunk.start, path)

    def _type(self, name: str) -> pa.DataType:
        if name == "label" and self.label_type is not None:
            return self.label_type
        return pa.float64()


def _scatter(values: np.ndarray, rows: np.ndarray, n: int, type_: pa.DataType) -> pa.Array:
    """``values`` at ``rows`` of an array of ``n``, null elsewhere."""
    full = np.zeros(n, dtype=values.dtype) if values.dtype != object else np.full(n, None)
    full[rows] = values
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return pa.array(full, type=type_, mask=mask)


def _rejects(bad: dict[int, tuple[str, str, str]], row: int, start: int, path: Path) -> pa.Table:
    rows = sorted(bad)
    return pa.table(
        {
            "row": pa.array([row + i for i in rows], pa.int64()),
            "file": pa.array([str(path)] * len(rows), pa.string()),
            "file_row": pa.array([start + i for i in rows], pa.int64()),
            "column": pa.array([bad[i][0] or None for i in rows], pa.string()),
            "value": pa.array([bad[i][1] or None for i in rows], pa.string()),
            "reason": pa.array([bad[i][2] for i in rows], pa.string()),
        },
        schema=REJECTS_SCHEMA,
    )
