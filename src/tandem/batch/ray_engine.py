"""``--engine ray``: the job's reading and scoring run on Ray Data; the driver writes.

    read_parquet / read_csv / read_json (one dataset per input, tagged with its number)
      ──► union ──► map_batches(an actor pool of Scorers) ──► iter_batches, in order
      ──► re-cut into the job's chunks ──► settle + parts + journal (as the local engine)

The actors build their Predictor from the Bundle's files, shipped through Ray's object store
and verified against the registry's digest on arrival, so worker nodes need no access to the
registry. The inputs must be readable from every node (a shared file system, or object
storage paths Ray's readers accept). The output and its journal are written by the driver
with the local engine's code: the same chunks, the same parts, the same resume.

Without ``--ray-address`` a local Ray instance is started (as many CPUs as this process may
use) and shut down at the end; with one, the job joins that cluster and leaves it running.
Ray is an optional dependency: ``pip install 'tandem-ml[ray]'``.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from tandem.batch.sources import Chunk, done_by_file
from tandem.errors import ConfigError, DataError, TandemError
from tandem.ledger.hardware import usable_cores

if TYPE_CHECKING:
    from tandem.batch.job import BatchOptions, Scored, Scorer, _Plan
    from tandem.batch.journal import Done

__all__ = ["scored_on_ray"]

FILE = "__tandem_file"


def scored_on_ray(
    plan: _Plan, done: Sequence[Done], scorer: Scorer, options: BatchOptions
) -> Iterator[Scored]:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray Data: pip install 'tandem-ml[ray]' (or 'ray[data]')"
        ) from None
    started_here = False
    if not ray.is_initialized():
        if options.ray_address is None:
            ray.init(num_cpus=usable_cores(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
            started_here = True
        else:
            try:
                ray.init(address=options.ray_address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(
                    f"cannot join the Ray cluster at {options.ray_address}: {exc}"
                ) from None
    try:
        yield from _scored(ray, plan, done, scorer, options)
    finally:
        if started_here:
            ray.shutdown()


def _scored(
    ray: Any, plan: _Plan, done: Sequence[Done], scorer: Scorer, options: BatchOptions
) -> Iterator[Scored]:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the output keeps the input's order
    done_rows, last = done_by_file(len(plan.inputs), [(d.file, d.rows_in) for d in done])
    todo = [i for i in range(len(plan.inputs)) if i >= last]
    folder = plan.version.path
    bundle = ray.put({name: (folder / name).read_bytes() for name in _bundle_files(folder)})
    # one read of every file, in order, each row saying its file; one read per file, one after
    # the other, when a column of the job is named "path" (Ray's column for where a row came)
    groups = [[i] for i in todo] if "path" in scorer.columns_read else [todo]
    cutter = _Cutter(options.chunk_rows, done_rows, plan, first=len(done))
    # half a CPU an actor: with whole ones on a small machine the read tasks never get a CPU
    # and the job waits for ever (measured on 2 CPUs)
    actors = usable_cores() if options.ray_address is None else 2
    for group in groups:
        ds = _read(ray, plan, group, scorer)
        scored = ds.map_batches(
            _RayScorer,
            fn_constructor_kwargs={"bundle": bundle, "digest": plan.version.digest,
                                   "keep": plan.keep},
            batch_size=options.chunk_rows, batch_format="pyarrow", concurrency=actors,
            num_cpus=0.5,
        )  # fmt: skip
        try:
            for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
                yield from cutter.feed(batch)
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, TandemError):
                raise cause from None
            last_line = str(cause or exc).strip().splitlines()[-1]
            raise DataError(f"the Ray job failed: {last_line}") from None
    yield from cutter.flush()


def _read(ray: Any, plan: _Plan, group: list[int], scorer: Scorer) -> Any:
    paths = [str(plan.inputs[i].path) for i in group]
    fmt = plan.inputs[group[0]].format
    columns = scorer.columns_read
    if fmt == "parquet":
        ds = ray.data.read_parquet(paths, columns=columns, include_paths=True)
    elif fmt == "csv":
        convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(scorer.numeric, pa.string()), include_columns=columns
        )
        ds = ray.data.read_csv(paths, convert_options=convert, include_paths=True)
    else:
        ds = ray.data.read_json(paths, lines=True, include_paths=True)
    numbers = {path: i for i, path in zip(group, paths, strict=True)}
    return ds.map_batches(_tag, fn_kwargs={"numbers": numbers, "columns": columns},
                          batch_format="pyarrow", zero_copy_batch=True)  # fmt: skip


def _tag(table: pa.Table, numbers: dict[str, int], columns: list[str]) -> pa.Table:
    """The columns the job reads (absent ones null) and each row's file number."""
    have = set(table.column_names)
    picked = {c: table.column(c) if c in have else pa.nulls(table.num_rows) for c in columns}
    # a batch holds rows of one file or a few: look each distinct path up once
    paths = table.column("path").combine_chunks().dictionary_encode()
    found = pa.array([_number(numbers, p) for p in paths.dictionary.to_pylist()], pa.int32())
    picked[FILE] = found.take(paths.indices)
    return pa.table(picked)


def _number(numbers: dict[str, int], path: str) -> int:
    """The job's number of the file Ray names ``path`` (it may drop a leading slash)."""
    found = numbers.get(path)
    if found is None:
        found = numbers.get("/" + path.lstrip("/"))
    if found is None:
        raise DataError(f"Ray read a row from '{path}', which is not one of the job's inputs")
    return found


class _RayScorer:
    """A Scorer in a Ray actor, built from the Bundle's bytes."""

    def __init__(self, bundle: Any, digest: str, keep: list[str]) -> None:
        import ray

        from tandem.batch.job import Scorer
        from tandem.bundle import load_bundle

        if isinstance(bundle, ray.ObjectRef):  # constructor arguments are not resolved
            bundle = ray.get(bundle)
        self._folder = tempfile.TemporaryDirectory(prefix="tandem-bundle-")
        for name, data in bundle.items():
            (Path(self._folder.name) / name).write_bytes(data)
        loaded = load_bundle(self._folder.name, expected_digest=digest)
        self.scorer = Scorer(loaded, keep, threads=1)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = self.scorer.score(table.drop([FILE]))
        return rows.append_column(FILE, table.column(FILE))


class _Cutter:
    """Scored rows in the order of the inputs, in batches of any size, re-cut into the job's
    chunks: ``chunk_rows`` rows per file, counted from each file's first row."""

    def __init__(self, chunk_rows: int, done_rows: list[int], plan: _Plan, *, first: int) -> None:
        self.index = first  # the job's number of the next chunk
        self.size = chunk_rows
        self.done_rows = done_rows
        self.plan = plan
        self.file: int | None = None
        self.start = 0  # the file's row number of the first row held
        self.seen = 0  # rows of the current file seen so far
        self.held: list[pa.Table] = []
        self.count = 0

    def feed(self, batch: pa.Table) -> Iterator[Scored]:
        files = batch.column(FILE).to_numpy()
        table = batch.drop([FILE])
        # the runs of rows from one file: the batch is in input order
        bounds = [0, *(np.flatnonzero(np.diff(files)) + 1).tolist(), table.num_rows]
        for lo, hi in itertools.pairwise(bounds):
            if lo == hi:
                continue
            f = int(files[lo])
            if f != self.file:
                yield from self.flush()
                self.file, self.seen, self.start = f, 0, self.done_rows[f]
            part = table.slice(lo, hi - lo)
            # rows a previous run already wrote: the file is read whole, its done rows dropped
            skip = min(max(self.done_rows[f] - self.seen, 0), part.num_rows)
            self.seen += part.num_rows
            part = part.slice(skip)
            while part.num_rows:
                take = min(self.size - self.count, part.num_rows)
                self.held.append(part.slice(0, take))
                self.count += take
                part = part.slice(take)
                if self.count == self.size:
                    yield self._emit()

    def flush(self) -> Iterator[Scored]:
        if self.count:
            yield self._emit()

    def _emit(self) -> Scored:
        assert self.file is not None
        rows = pa.concat_tables(self.held, promote_options="permissive").combine_chunks()
        f = self.plan.inputs[self.file]
        end = self.start + rows.num_rows
        read = end / f.rows if f.rows else 0.0
        # the chunk's rows were read on Ray: it stands here for their place in the job only
        placeholder = pa.record_batch([pa.nulls(rows.num_rows)], names=["_"])
        chunk = Chunk(self.index, self.file, self.start, placeholder, read=min(read, 1.0))
        self.index += 1
        self.start = end
        self.held, self.count = [], 0
        return chunk, rows


def _bundle_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())
