"""A batch job's work folder: numbered parts, a journal of finished chunks, an atomic finish.

Next to the output ``scores.parquet`` a job keeps ``.scores.parquet.tandem-batch/``:

    job.json        what the job is (model version and digest, inputs with size and mtime,
                    chunk size, columns kept, format, error policy), written once
    journal.jsonl   one line per finished chunk, appended in chunk order and fsync'd
    part-000017.arrow, rejects-000017.arrow
                    the chunk's output rows and rejected rows (Arrow IPC)

A chunk counts as done once its line is in the journal, and its line is written only after
its parts are complete on disk (temp file, fsync, rename). ``kill -9`` at any moment therefore
leaves a journal whose complete lines name complete parts; a torn last line or a part without
a line is work to redo. The finish writes the output (and the rejects file) to temp files,
renames them into place, then removes the folder; a crash in between is finished again by
the next ``--resume``, which rewrites the same bytes.

Why our own and not a table format: the job needs exactly "which chunks are done, in order",
a file any tool can read at the end, and nothing running beside it (no catalog, no server).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tandem.errors import UsageError

__all__ = ["Done", "Journal", "rejects_path", "work_folder"]


def work_folder(output: Path) -> Path:
    return output.parent / f".{output.name}.tandem-batch"


def rejects_path(output: Path) -> Path:
    """``scores.parquet`` -> ``scores.rejects.parquet``."""
    return output.with_name(f"{output.stem}.rejects{output.suffix}")


@dataclass(frozen=True)
class Done:
    """One finished chunk, as the journal records it."""

    index: int
    file: int
    start: int
    rows_in: int
    rows_out: int
    rejects: int


class Journal:
    """The work folder of the job writing ``output``."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.folder = work_folder(output)
        self.done: list[Done] = []
        self.ended = False
        self._log: Any = None
        #: the output, written as chunks are stored, when this run scores every chunk: the
        #: finish then only renames it (else it is written from the parts)
        self._final: TableWriter | None = None
        self._final_path = self.folder / "final-output.tmp"

    # -- starting --------------------------------------------------------------------------------

    def exists(self) -> bool:
        shutil.rmtree(_trash(self.folder), ignore_errors=True)  # what a finished job left
        return (self.folder / "job.json").exists()

    def begin(self, job: dict[str, Any]) -> None:
        """Start afresh: a new folder holding ``job`` (any previous one is removed)."""
        self.discard()
        self.folder.mkdir()
        _write_atomic(self.folder / "job.json", json.dumps(job, indent=2).encode())
        self._open_log()

    def resume(self, job: dict[str, Any]) -> None:
        """Take up the folder a previous run left, which must be for the same ``job``."""
        try:
            before = json.loads((self.folder / "job.json").read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"the unfinished job in {self.folder} cannot be read ({exc}): start over with "
                "--overwrite"
            ) from None
        changed = sorted(k for k in {*before, *job} if before.get(k) != job.get(k))
        if changed:
            raise UsageError(
                f"--resume: the unfinished job for '{self.output}' was started with other "
                f"{', '.join(changed)} than this one (a changed input file, model version or "
                "option): rerun it as it was, or start over with --overwrite"
            )
        self.done, self.ended = _read_journal(self.folder / "journal.jsonl")
        self._open_log()

    def _open_log(self) -> None:
        path = self.folder / "journal.jsonl"
        # rewrite the good lines: a torn last line is dropped, appends start on a line of
        # their own
        lines = [orjson.dumps(d.__dict__) for d in self.done]
        if self.ended:
            lines.append(orjson.dumps({"end": len(self.done)}))
        _write_atomic(path, b"".join(line + b"\n" for line in lines))
        self._log = open(path, "ab")  # noqa: SIM115 - kept open for the job's appends

    # -- chunks ----------------------------------------------------------------------------------

    def stream_output(self, fmt: str, schema: pa.Schema) -> None:
        """Write the output as chunks come (a run that scores every chunk, from the first)."""
        if not self.done:
            self._final = TableWriter(self._final_path, fmt, schema)

    def write(self, done: Done, output: pa.Table, rejects: pa.Table | None) -> None:
        """Store one chunk's parts, then record it as done."""
        if done.index != len(self.done):
            raise AssertionError(f"chunk {done.index} written after {len(self.done)} chunks")
        _write_ipc(self.folder / f"part-{done.index:06d}.arrow", output)
        if rejects is not None and rejects.num_rows:
            _write_ipc(self.folder / f"rejects-{done.index:06d}.arrow", rejects)
        self._append(done.__dict__)
        self.done.append(done)
        if self._final is not None:
            try:
                self._final.write(output)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                # a chunk's types differ from the first's (JSON Lines): the finish unifies
                # them from the parts instead
                self._drop_final()

    def _drop_final(self) -> None:
        if self._final is not None:
            with contextlib.suppress(Exception):
                self._final.close()
            self._final = None
        self._final_path.unlink(missing_ok=True)

    def end(self) -> None:
        """Record that every chunk is done."""
        self._append({"end": len(self.done)})
        self.ended = True

    def _append(self, record: dict[str, Any]) -> None:
        self._log.write(orjson.dumps(record) + b"\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    # -- finishing -------------------------------------------------------------------------------

    def _files(self, kind: str) -> Iterator[Path]:
        """The finished chunks' part (or rejects) files, in order."""
        for d in self.done:
            if kind == "part" or d.rejects:
                yield self.folder / f"{kind}-{d.index:06d}.arrow"

    def parts(self, kind: str = "part") -> Iterator[pa.Table]:
        for path in self._files(kind):
            with pa.memory_map(str(path)) as source:
                yield pa.ipc.open_file(source).read_all()

    def finish(self, fmt: str, empty: pa.Schema, *, rejects: pa.Schema | None) -> None:
        """Write the output (and the rejects file, when the job keeps one) from the parts,
        atomically, and remove the work folder.

        ``empty`` is the output's schema when there are no parts; otherwise the parts' types
        are unified (a JSON Lines column that read as int64 in one chunk and as double in the
        next is double throughout).
        """
        if rejects is not None:
            _write_final(self, "rejects", rejects_path(self.output), fmt, rejects)
        if self._final is not None and self.ended:
            self._final.close()
            self._final = None
            _fsync(self._final_path)
            os.replace(self._final_path, self.output)
        else:
            self._drop_final()
            _write_final(self, "part", self.output, fmt, empty)
        self.close()
        # one rename says the job is over; removing the files one by one does not (a kill
        # midway left a journal whose parts were gone, and the resume failed: measured)
        trash = _trash(self.folder)
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(self.folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def schema(self, kind: str, empty: pa.Schema) -> pa.Schema:
        schemas = []
        for path in self._files(kind):
            with pa.memory_map(str(path)) as source:
                schemas.append(pa.ipc.open_file(source).schema)
        if not schemas:
            return empty
        if all(s == schemas[0] for s in schemas):
            return schemas[0]
        return pa.unify_schemas(schemas, promote_options="permissive")

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._final is not None:
            self._drop_final()

    def discard(self) -> None:
        self.close()
        if self.folder.exists():
            trash = _trash(self.folder)
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.folder, trash)  # gone at once, then removed at leisure
            shutil.rmtree(trash, ignore_errors=True)


def _trash(folder: Path) -> Path:
    return folder.with_name(folder.name + ".finished")


def _read_journal(path: Path) -> tuple[list[Done], bool]:
    done: list[Done] = []
    ended = False
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        for line in f:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                break  # a torn last line: that chunk is redone
            if "end" in record:
                ended = record["end"] == len(done)
                break
            d = Done(**record)
            if d.index != len(done):
                break
            done.append(d)
    return done, ended


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_ipc(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_final(journal: Journal, kind: str, target: Path, fmt: str, empty: pa.Schema) -> None:
    tmp = journal.folder / f"final-{target.name}.tmp"
    try:
        write_stream(journal.parts(kind), tmp, fmt, journal.schema(kind, empty))
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_stream(tables: Iterator[pa.Table], path: Path, fmt: str, schema: pa.Schema) -> None:
    """Write tables one after another as one file of ``fmt`` (memory: one table at a time)."""
    writer = TableWriter(path, fmt, schema)
    try:
        for t in tables:
            writer.write(t)
    finally:
        writer.close()


class TableWriter:
    """One output file of ``fmt`` written table by table, each cast to ``schema``."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema) -> None:
        self.schema = schema
        self.fmt = fmt
        self._writer: Any
        if fmt == "parquet":
            # dictionary encoding made float writes 4.8x slower (DESIGN.md)
            self._writer = pq.ParquetWriter(path, schema, use_dictionary=False)
        elif fmt == "csv":
            self._writer = pacsv.CSVWriter(path, schema)
        else:
            self._writer = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(self, table: pa.Table) -> None:
        if self.fmt == "jsonl":
            self._writer.write(_jsonl(table))
        else:
            self._writer.write_table(table.cast(self.schema))

    def close(self) -> None:
        self._writer.close()


def _jsonl(table: pa.Table) -> bytes:
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    return b"".join(orjson.dumps(row, default=str, option=option) for row in table.to_pylist())
