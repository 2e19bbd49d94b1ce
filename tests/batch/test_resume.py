"""Crash safety: ``kill -9`` at random moments, then ``--resume``, gives the uninterrupted
output; the chunking that makes it possible is the same in every run."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.batch.journal import work_folder
from tandem.batch.sources import chunks, list_inputs
from tests.helpers import TANDEM, cli_env, numeric_table

ROWS = 600_000
CHUNK = 6_000  # 100 chunks


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("resume-input")
    table = numeric_table(ROWS, seed=9).drop(["y"])
    table = table.append_column("id", pa.array(np.arange(ROWS)))
    path = folder / "rows.parquet"
    pq.write_table(table, path, row_group_size=50_000)
    return path


def batch_args(source: Path, out: Path, *extra: str) -> list[str]:
    return [*TANDEM, "batch", "num", "--input", str(source), "--output", str(out), "--keep", "id",
            "--chunk-rows", str(CHUNK), "--threads", "1", *extra]  # fmt: skip


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_output(
    models_home: Path, big_input: Path, tmp_path: Path
) -> None:
    env = cli_env(models_home)
    reference = tmp_path / "reference.parquet"
    started = time.monotonic()
    done = subprocess.run(
        batch_args(big_input, reference), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    full = time.monotonic() - started

    rng = random.Random(20261122)
    out = tmp_path / "killed.parquet"
    journal = work_folder(out) / "journal.jsonl"
    kills = 0
    mid_job = 0  # kills that left some chunks journaled, not all
    for attempt in range(30):
        extra = ["--resume"] if attempt else []
        proc = subprocess.Popen(batch_args(big_input, out, *extra, "--json"), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        if attempt % 2:  # at a random moment, from start-up to past the end of the work
            time.sleep(rng.uniform(0.05, full * 1.1))
        else:  # once a random number of chunks is journaled (the moments that matter most)
            lines = rng.randint(1, ROWS // CHUNK)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if journal.exists() and journal.read_bytes().count(b"\n") >= lines:
                    break
                time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            kills += 1
            with contextlib.suppress(FileNotFoundError):
                mid_job += 0 < journal.read_bytes().count(b"\n") < ROWS // CHUNK
            continue
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        if kills >= 6 and mid_job >= 3:
            break
        out.unlink()  # a new job, and more kills
    assert kills >= 6 and mid_job >= 3, (
        f"{kills} kills, {mid_job} mid-job; the job ran {full:.1f} s"
    )
    assert out.exists() and not work_folder(out).exists()
    got = pq.read_table(out)
    assert got.num_rows == ROWS
    assert got.column("id").to_pylist() == list(range(ROWS))  # every row once, in order
    assert got.equals(pq.read_table(reference))


def test_a_torn_journal_line_and_a_stray_part_are_redone(
    models_home: Path, big_input: Path, tmp_path: Path
) -> None:
    """The state a kill leaves between writing a part and its journal line, or mid-line."""
    env = cli_env(models_home)
    reference = tmp_path / "reference.parquet"
    assert subprocess.run(batch_args(big_input, reference), env=env, timeout=300).returncode == 0
    out = tmp_path / "out.parquet"
    journal = work_folder(out) / "journal.jsonl"
    proc = subprocess.Popen(batch_args(big_input, out), env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(30)
    assert journal.exists(), "the job finished before three of its 100 chunks were journaled"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3]) + b'{"index": 3, "fi')
    (journal.parent / "part-000003.arrow").write_bytes(b"half a part")
    done = subprocess.run(batch_args(big_input, out, "--resume", "--json"), env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["resumed_chunks"] == 3
    assert pq.read_table(out).equals(pq.read_table(reference))


def test_resume_refuses_a_changed_job_and_a_fresh_run_refuses_a_pending_one(
    models_home: Path, tmp_path: Path
) -> None:
    env = cli_env(models_home)
    source = tmp_path / "rows.csv"
    table = numeric_table(3000, seed=1).drop(["y"])
    pacsv.write_csv(table.append_column("id", pa.array(np.arange(3000))), source)
    out = tmp_path / "out.parquet"
    folder = work_folder(out)
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps({"model": "num:1", "chunk_rows": 5}))
    fresh = subprocess.run(
        batch_args(source, out), env=env, capture_output=True, text=True, timeout=120
    )
    assert (
        fresh.returncode == 2 and "an unfinished job" in fresh.stderr and "--resume" in fresh.stderr
    )
    resumed = subprocess.run(
        batch_args(source, out, "--resume"), env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 2 and "was started with other" in resumed.stderr
    assert "chunk_rows" in resumed.stderr and "--overwrite" in resumed.stderr
    over = subprocess.run(
        batch_args(source, out, "--overwrite"), env=env, capture_output=True, text=True, timeout=120
    )
    assert over.returncode == 0, over.stderr
    assert pq.read_table(out).num_rows == 3000 and not folder.exists()
    # --resume on a finished job: nothing to do, said so, output untouched
    before = out.read_bytes()
    again = subprocess.run(
        batch_args(source, out, "--resume"), env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "nothing to resume" in " ".join(again.stdout.split())
    assert out.read_bytes() == before


# -- chunking ----------------------------------------------------------------------------------


def _write(fmt: str, table: pa.Table, path: Path) -> None:
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=7)
    elif fmt == "csv":
        pacsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    chunk_rows=st.integers(1, 25),
    fmt=st.sampled_from(["parquet", "csv", "jsonl"]),
    cut=st.floats(0, 1),
)
def test_chunks_cover_every_row_once_in_order_and_resume_from_any_prefix(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    chunk_rows: int,
    fmt: str,
    cut: float,
) -> None:
    folder = tmp_path_factory.mktemp("chunks")
    paths = []
    row = 0
    for i, n in enumerate(sizes):
        if n == 0 and fmt != "parquet":
            continue  # an empty CSV/JSONL file has no header to read columns from
        table = pa.table(
            {"id": pa.array(range(row, row + n), pa.int64()), "v": pa.array([0.5] * n)}
        )
        row += n
        paths.append(folder / f"{i}.{fmt}")
        _write(fmt, table, paths[-1])
    if not paths:
        return
    inputs = list_inputs(paths)
    every = list(chunks(inputs, chunk_rows, columns=["id", "v"]))
    ids = [i for c in every for i in c.batch.column("id").to_pylist()]
    assert ids == list(range(row))
    assert [c.index for c in every] == list(range(len(every)))
    for c in every:  # exact sizes, never across files, the last of a file may be short
        assert 0 < c.rows <= chunk_rows
        assert c.start % chunk_rows == 0
    # resuming after any prefix gives exactly the rest
    k = int(cut * len(every))
    rest = list(chunks(inputs, chunk_rows, columns=["id", "v"],
                       done=[(c.file, c.rows) for c in every[:k]]))  # fmt: skip
    assert [(c.index, c.file, c.start) for c in rest] == [
        (c.index, c.file, c.start) for c in every[k:]
    ]
    assert all(a.batch.equals(b.batch) for a, b in zip(rest, every[k:], strict=True))
