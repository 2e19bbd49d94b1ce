"""`tandem batch` against the limit of the machine and against Ray Data, in the same run.

    PYTHONPATH=src python benchmarks/bench_batch.py [--quick] [--rows N]

Data: 2,000,000 rows × 32 float features (plus an int64 id) in one Parquet file, generated
deterministically (seed 0) and cached under ``benchmarks/out/batch-data``. Models: W1 (tandem's
MLP 32→256→ReLU→256→ReLU→2) and a 200-tree LightGBM model, both frozen Bundles.

For each model, in the same run:

* **model limit**: rows/s of the Bundle's ONNX Runtime session alone, in memory, on a feed
  built once, at the best of several batch sizes and thread layouts;
* **IO limit**: rows/s of a bare pyarrow pass with no model: read the 33 input columns in
  row groups, write the id and three float64 columns of the same length to Parquet;
* **limit**: both together, one after the other (1 / (1/model + 1/IO)); a pipeline that
  overlaps them could reach min(model, IO), also shown;
* **Ray Data**: ``read_parquet → map_batches`` with an actor pool of 2 Predictors (the same
  Bundle) ``→ write_parquet``, on a local Ray instance of 2 CPUs; the job's wall time after
  ``ray.init`` (the start-up is printed apart);
* **tandem batch**: ``tandem batch NAME --input rows.parquet --output out.parquet --keep id``
  as a subprocess, for chunk sizes and thread layouts; the job's own wall time and peak
  RSS from ``--json`` (interpreter start-up excluded, model load included).

Goals (issue 4): tandem ≥ 85 % of the limit, ≥ 2× Ray Data, peak RSS ≤ 1 GB. Medians of
``--repeats`` runs; the machine is shared, so read ratios within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _common import (  # noqa: E402
    OUT_DIR,
    machine,
    median,
    synthetic_classification,
    temp_registry,
    text_table,
    train_models,
    write_json,
)

SCRIPT = "bench_batch"
N_FEATURES = 32
MODELS = ("w1", "gbdt")
#: tandem batch cells: (chunk rows, --threads); threads 0 = the default, a single-threaded
#: session per core; 1 or 2 = one session with that many intra-op threads
CELLS = ((16_384, 0), (65_536, 0), (262_144, 0), (65_536, 1), (65_536, 2))
QUICK_CELLS = ((65_536, 0), (65_536, 2))
GOALS = {"limit_share": 0.85, "vs_ray": 2.0, "peak_rss_mb": 1024.0}
SRC = BENCH_DIR.parent / "src"


def make_data(rows: int) -> Path:
    """The input file, generated once per row count (seed 0), in row groups of 128k rows."""
    folder = OUT_DIR / "batch-data"
    path = folder / f"rows-{rows}.parquet"
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    names = [f"f{i:02d}" for i in range(N_FEATURES)]
    schema = pa.schema([("id", pa.int64()), *[(n, pa.float64()) for n in names]])
    step = 131_072
    with pq.ParquetWriter(tmp, schema, use_dictionary=False) as writer:
        for lo in range(0, rows, step):
            n = min(step, rows - lo)
            x, _ = synthetic_classification(rng, n, N_FEATURES)
            cols = {"id": pa.array(np.arange(lo, lo + n))}
            cols.update((name, pa.array(x[:, i])) for i, name in enumerate(names))
            writer.write_table(pa.table(cols, schema=schema))
    tmp.replace(path)
    return path


def training_table(n: int = 20_000) -> pa.Table:
    x, y = synthetic_classification(np.random.default_rng(1), n, N_FEATURES)
    return pa.table({**{f"f{i:02d}": x[:, i] for i in range(N_FEATURES)}, "y": y})


# -- the limit ------------------------------------------------------------------------------------


def model_limit(registry: Any, name: str, source: Path, sample: int) -> dict[str, Any]:
    """Best rows/s of bare sessions over batch sizes and layouts, on prebuilt feeds: one
    session with 1 or 2 intra-op threads, or one single-threaded session per core, each on
    its own Python thread (ONNX Runtime releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import tandem

    table = pq.read_table(source).slice(0, sample)
    best: dict[str, Any] = {"rows_per_s": 0.0}
    cores = len(os.sched_getaffinity(0))
    layouts = [("1 session x 1 thread", 1, 1), ("1 session x 2 threads", 1, 2),
               (f"{cores} sessions x 1 thread", cores, 1)]  # fmt: skip
    for label, sessions, threads in layouts:
        predictors = [
            tandem.load(name, registry=registry, threads=threads) for _ in range(sessions)
        ]
        feed = predictors[0].encode(predictors[0].preprocess(table))
        for batch in (1024, 4096, 16_384):
            feeds = [
                {k: np.ascontiguousarray(v[..., lo : lo + batch]) for k, v in feed.items()}
                for lo in range(0, sample, batch)
            ]
            for p in predictors:
                p.forward(feeds[0])  # warm

            t0 = time.perf_counter()
            with ThreadPoolExecutor(sessions) as pool:
                list(
                    pool.map(
                        _forward_share, predictors, [feeds[j::sessions] for j in range(sessions)]
                    )
                )
            rate = sample / (time.perf_counter() - t0)
            if rate > best["rows_per_s"]:
                best = {"rows_per_s": rate, "batch": batch, "layout": label}
    return best


def _forward_share(predictor: Any, feeds: list[dict[str, Any]]) -> None:
    for f in feeds:
        predictor.forward(f)


def io_limit(source: Path, out: Path, outputs: int = 3) -> float:
    """rows/s of reading every input column and writing id + ``outputs`` float64 columns."""
    t0 = time.perf_counter()
    # without pre-buffering: the fastest way measured here (pyarrow's default held the whole
    # file and read 6x slower)
    pf = pq.ParquetFile(source, pre_buffer=False, buffer_size=1 << 20)
    rows = 0
    schema = pa.schema([("id", pa.int64()), *[(f"p{i}", pa.float64()) for i in range(outputs)]])
    with pq.ParquetWriter(out, schema, use_dictionary=False) as writer:
        for batch in pf.iter_batches(batch_size=65_536):
            n = batch.num_rows
            zeros = pa.array(np.zeros(n))
            writer.write_table(pa.table([batch.column("id"), *[zeros] * outputs], schema=schema))
            rows += n
    rate = rows / (time.perf_counter() - t0)
    out.unlink()
    return rate


# -- the contenders -------------------------------------------------------------------------------


def run_tandem(
    home: Path, name: str, source: Path, out: Path, chunk: int, threads: int
) -> dict[str, Any]:
    env = dict(os.environ, TANDEM_HOME=str(home), PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-c", "from tandem.cli import main; main()", "batch", name,
           "--input", str(source), "--output", str(out), "--keep", "id", "--overwrite",
           "--chunk-rows", str(chunk), "--json", *(["--threads", str(threads)] if threads else [])]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    report = json.loads(done.stdout)
    return {"rows_per_s": report["rows_in"] / report["wall_seconds"], "wall_s": report["wall_seconds"],
            "cpu_s": report["cpu_seconds"], "peak_rss_mb": report["peak_rss_mb"]}  # fmt: skip


RAY_JOB = r"""
import json, sys, time
import ray
t0 = time.perf_counter()
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
import ray.data
started = time.perf_counter() - t0
source, out, bundle, digest, batch = sys.argv[1:6]
batch = int(batch)

class Score:
    def __init__(self):
        from tandem.bundle import load_bundle
        from tandem.inference.predictor import Predictor
        self.predictor = Predictor(load_bundle(bundle, expected_digest=digest), threads=1)
    def __call__(self, table):
        import pyarrow as pa
        decoded = self.predictor.predict_columns(table)
        return pa.table({"id": table.column("id"), **{k: pa.array(v) for k, v in decoded.items()}})

ray.data.DataContext.get_current().execution_options.preserve_order = True
t1 = time.perf_counter()
ds = ray.data.read_parquet(source)
# two actors of half a CPU each: with two actors of one CPU on a 2-CPU instance, the read
# tasks never get a CPU and the job hangs (measured)
ds = ds.map_batches(Score, batch_size=batch, batch_format="pyarrow", concurrency=2, num_cpus=0.5)
ds.write_parquet(out)
wall = time.perf_counter() - t1
print(json.dumps({"startup_s": started, "wall_s": wall}))
ray.shutdown()
"""


def run_ray(
    home: Path, version: Any, source: Path, out: Path, rows: int, batch: int
) -> dict[str, Any]:
    import resource

    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(SRC), RAY_DEDUP_LOGS="0")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", RAY_JOB, str(source), str(out), str(version.path),
                           version.digest, str(batch)], env=env, capture_output=True, text=True,
                          timeout=1800)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"rows_per_s": rows / report["wall_s"], "wall_s": report["wall_s"],
            "startup_s": report["startup_s"], "cpu_s_all_processes": cpu}  # fmt: skip


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="200,000 rows, one repeat, fewer cells"
    )
    parser.add_argument("--rows", type=int, default=None, help="rows of input (default 2,000,000)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per cell (default 3; quick 1)"
    )
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Data")
    args = parser.parse_args()
    rows = args.rows or (200_000 if args.quick else 2_000_000)
    repeats = args.repeats or (1 if args.quick else 3)
    cells = QUICK_CELLS if args.quick else CELLS
    started = time.perf_counter()

    print(f"data: {rows:,} rows × {N_FEATURES} float64 features + id", flush=True)
    source = make_data(rows)
    print(f"  {source} ({source.stat().st_size / 2**20:.0f} MiB)", flush=True)
    work = OUT_DIR / "batch-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict[str, Any] = {"rows": rows, "machine": machine(), "cells": {}}

    with temp_registry() as registry:
        home = registry.settings.home
        results["models"] = train_models(registry, training_table(), budget=60)
        io = median([io_limit(source, work / "io.parquet") for _ in range(repeats)])
        print(f"IO limit (read 33 columns, write 4): {io:,.0f} rows/s", flush=True)
        results["io_rows_per_s"] = io
        table_rows = []
        goals = []
        for name in MODELS:
            limit = model_limit(registry, name, source, min(rows, 262_144))
            serial = 1 / (1 / limit["rows_per_s"] + 1 / io)
            overlapped = min(limit["rows_per_s"], io)
            print(f"{name}: model limit {limit['rows_per_s']:,.0f} rows/s (batch {limit['batch']}, "
                  f"{limit['layout']}); with IO {serial:,.0f} serial, {overlapped:,.0f} overlapped",
                  flush=True)  # fmt: skip
            cell: dict[str, Any] = {"model_limit": limit, "limit_serial": serial,
                                    "limit_overlapped": overlapped, "tandem": {}}  # fmt: skip
            for chunk, threads in cells:
                runs = [run_tandem(home, name, source, work / "out.parquet", chunk, threads)
                        for _ in range(repeats)]  # fmt: skip
                best = {k: median([r[k] for r in runs]) for k in runs[0]}
                how = f"threads {threads}" if threads else "a session per core"
                cell["tandem"][f"{chunk} rows, {how}"] = best
                print(f"  tandem chunk {chunk:>7,}, {how}: {best['rows_per_s']:>10,.0f} rows/s, "
                      f"peak RSS {best['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
            if not args.no_ray:
                version = registry.get(name)
                # once: at ~15k rows/s a run over 2M rows takes minutes
                ray_runs = [run_ray(home, version, source, work / "ray-out", rows, 65_536)]
                cell["ray"] = {k: median([r[k] for r in ray_runs]) for k in ray_runs[0]}
                print(f"  Ray Data: {cell['ray']['rows_per_s']:,.0f} rows/s (+{cell['ray']['startup_s']:.1f} s "
                      "to start Ray)", flush=True)  # fmt: skip
            default = cell["tandem"]["65536 rows, a session per core"]
            top_key = max(cell["tandem"], key=lambda k: cell["tandem"][k]["rows_per_s"])
            top = cell["tandem"][top_key]
            ray_rate = cell.get("ray", {}).get("rows_per_s")
            table_rows.append([
                name, f"{limit['rows_per_s']:,.0f}", f"{io:,.0f}", f"{serial:,.0f}", f"{overlapped:,.0f}",
                f"{default['rows_per_s']:,.0f}", f"{top['rows_per_s']:,.0f} ({top_key})",
                f"{default['rows_per_s'] / serial:.2f}", f"{default['rows_per_s'] / overlapped:.2f}",
                "-" if ray_rate is None else f"{ray_rate:,.0f}",
                "-" if ray_rate is None else f"{default['rows_per_s'] / ray_rate:.2f}",
                f"{max(r['peak_rss_mb'] for r in cell['tandem'].values()):.0f}",
            ])  # fmt: skip
            goals.append([f"{name}: tandem ≥ {GOALS['limit_share']:.0%} of the limit (serial)",
                          f"{default['rows_per_s'] / serial:.2f}",
                          "met" if default["rows_per_s"] >= GOALS["limit_share"] * serial else "MISSED"])  # fmt: skip
            if ray_rate is not None:
                goals.append([f"{name}: tandem ≥ {GOALS['vs_ray']:.0f}× Ray Data",
                              f"{default['rows_per_s'] / ray_rate:.2f}×",
                              "met" if default["rows_per_s"] >= GOALS["vs_ray"] * ray_rate else "MISSED"])  # fmt: skip
            peak = max(r["peak_rss_mb"] for r in cell["tandem"].values())
            goals.append([f"{name}: peak RSS ≤ {GOALS['peak_rss_mb']:.0f} MB", f"{peak:.0f} MB",
                          "met" if peak <= GOALS["peak_rss_mb"] else "MISSED"])  # fmt: skip
            results["cells"][name] = cell
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        "rows/s; tandem = the defaults (65,536-row chunks, a session per core); best = the best cell"
    )
    print(text_table(["model", "model limit", "IO limit", "limit", "overlapped", "tandem", "best",
                      "×limit", "×overlapped", "Ray Data", "×Ray", "peak MB"], table_rows))  # fmt: skip
    print()
    print(text_table(["goal", "measured", "verdict"], goals))
    results["goals"] = goals
    print(f"\ntotal {time.perf_counter() - started:.0f}s; results in {write_json(SCRIPT, results)}")


if __name__ == "__main__":
    main()
