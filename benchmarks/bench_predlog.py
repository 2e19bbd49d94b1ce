"""Prediction log: what ``tandem serve --log-sample 1`` costs against ``--log-sample 0``, under wrk.

Claim under test (issue goal): serving throughput with the prediction log on (every request
logged, the default) stays ≥ 95 % of the same server with the log off.

How: W1 (tandem's MLP 32→256→ReLU→256→ReLU→2) and a 200-tree LightGBM model are trained as in
bench_serving into a throw-away registry, copied once per server so that each server's log
lands in its own ``$TANDEM_HOME/predictions/<model>/``. The servers are all
``tandem serve w1 gbdt --threads 1``, pinned to core 0, and differ only in the log:

  log-0          ``--log-sample 0``: the baseline, no log
  log-1          ``--log-sample 1``: ours, every request logged
  log-0.1        ``--log-sample 0.1``: one request in ten
  log-0-again    ``--log-sample 0`` again: an A/A control, the baseline's twin, whose ratio to
                 log-0 is the noise floor of this machine and method (a difference smaller
                 than its spread is not resolved)
  log-1-nowrite  (``--diagnose``) sample 1, but the writer thread drops what waits instead of
                 writing it (``PredictionLog._write`` patched to a no-op in the server
                 process): the per-request cost without the writer's

Load: wrk pinned to core 1 with bench_serving's Lua hook, closed loop, each call one Open
Inference Protocol request of 1 row or of 32 rows (one ``[n, 32]`` FP64 matrix). Cells: W1 ×
{1, 32 rows} × concurrency {8, 64} and GBDT × {1, 32 rows} × 64. Cell by cell: a 1 s warm-up
per server, then ``--rounds`` rounds in which the servers take turns in a rotating order. Per
cell: req/s (median), the paired ratio to log-0 (median of per-round ratios), p99, and CPU µs
per request.

The writer flushes every 10 s (sooner once 100,000 rows wait) whatever is running, so part of
its work lands in another server's run, on the same core: that slows the other server, which
flatters the ratio, and leaves the work out of the logging server's own runs. So the CPU each
idle server used during the others' runs is recorded ("background"); a cell's CPU µs per
request is the server's CPU over its runs plus its background in that cell, over its requests
(on one saturated core, capacity is its inverse), and a server's all-in CPU per request runs
from ready to exit (the last from ``wait4``, so the final flush counts) over every request it
answered. After the load each server's ``/metrics`` gives the rows and requests it answered;
it is stopped with SIGTERM (the log's last flush) and its log read back with ``read_log``:
rows logged must equal rows answered (for 0.1: about a tenth of the requests).

In-process, pinned to core 0, on 64,000 distinct random rows (wrk repeats one body, which
compresses to almost nothing on disk): what ``sampled()`` + ``add()`` costs a request (a
request the server answers alone), what ``add_batch()`` costs a request in batches of 16 (what
the server calls once a batch is answered), what the writer's ``flush()`` costs a row, and the
bytes a logged row takes on disk; with
``--diagnose``, where a flush spends its time, by function (cProfile).

    PYTHONPATH=src python benchmarks/bench_predlog.py [--quick] [--diagnose]

(~8 min, ~10 with ``--diagnose``; ``--quick``: ~2 min, one round of 2 s.) Needs wrk and
taskset on PATH and 2 cores. Results also go to ``benchmarks/out/bench_predlog.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _common import (  # noqa: E402
    load_test_unavailable,
    median,
    paired_ratio,
    save_results,
    text_table,
    train_models,
)
from bench_serving import (  # noqa: E402
    HOST,
    METRICS,
    MODELS,
    PORT,
    SERVER_CORE,
    Server,
    ServerSpec,
    http_request,
    make_data,
    oip_body,
    pinned,
    run_wrk,
    smoke,
    wrk_scripts,
)

SCRIPT = "bench_predlog"
GOAL_RATIO = 0.95
BASELINE, OURS, NO_WRITE, TWIN = "log-0", "log-1", "log-1-nowrite", "log-0-again"
#: (model, rows per request, concurrency), neighbours alike: a cell's last rows are written
#: during the next cell
CELLS = (
    ("w1", 1, 8),
    ("w1", 1, 64),
    ("gbdt", 1, 64),
    ("gbdt", 32, 64),
    ("w1", 32, 64),
    ("w1", 32, 8),
)
BATCH_ROWS = sorted({rows for _, rows, _ in CELLS})
#: requests per batch in the in-process timing of ``add_batch`` (what the server calls)
BATCHED = 16
CLI = "from tandem.cli import main; main()"
# the diagnostic server: requests still queue their rows, the writer thread still wakes and
# swaps the queue out, but nothing is turned into a table or written
DROP_WRITES = (
    "import tandem.monitoring.predictions as p; "
    "p.PredictionLog._write = lambda self, pending: None; " + CLI
)


def server_specs(diagnose: bool) -> list[ServerSpec]:
    variants = [
        (BASELINE, "0", CLI, "no prediction log (the baseline)"),
        (OURS, "1", CLI, "every request logged (the default)"),
        ("log-0.1", "0.1", CLI, "one request in ten logged"),
        (TWIN, "0", CLI, "no prediction log, a second server alike: the noise floor"),
    ]
    if diagnose:
        variants.append((NO_WRITE, "1", DROP_WRITES, "every request queued, nothing written"))
    return [log_spec(key, sample, what, code) for key, sample, code, what in variants]


def log_spec(key: str, sample: str, what: str, code: str = CLI) -> ServerSpec:
    """``tandem serve w1 gbdt --threads 1 --log-sample SAMPLE`` (``code`` starts it)."""
    serve = ["serve", *MODELS, "--host", HOST, "--port", PORT, "--threads", "1"]
    return ServerSpec(
        key,
        f"tandem serve w1 gbdt --threads 1 --log-sample {sample}: {what}",
        [sys.executable, "-c", code, *serve, "--log-sample", sample],
    )


# -- load --------------------------------------------------------------------------------------


def measured_run(
    servers: dict[str, Server], key: str, cell: tuple[str, int, int], lua: Path, seconds: int
) -> dict[str, Any]:
    """One wrk run against ``key``, with the CPU the other (idle) servers used meanwhile: the
    log writer flushes on its own clock, sometimes during another server's run."""
    model, _, c = cell
    idle = {k: s.cpu_seconds() for k, s in servers.items() if k != key}
    run = run_wrk(servers[key], model, lua, c, seconds)
    run["idle_cpu_s"] = {k: servers[k].cpu_seconds() - v for k, v in idle.items()}
    return run


def load_runs(
    servers: dict[str, Server], lua: dict[int, Path], rounds: int, seconds: int, warmup: int
) -> list[dict[str, Any]]:
    """Cell by cell (a server's consecutive runs are the same cell, so a flush that comes
    late still lands among that cell's runs), the servers in a rotating order each round."""
    keys = list(servers)
    cells = []
    for n, cell in enumerate(CELLS):
        model, rows, c = cell
        print(f"cell {n + 1}/{len(CELLS)}: {model}, {rows} row(s), c={c}", flush=True)
        for key in keys:
            measured_run(servers, key, cell, lua[rows], warmup)
        by_key: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
        for r in range(rounds):
            for i in range(len(keys)):
                key = keys[(r + i) % len(keys)]
                by_key[key].append(measured_run(servers, key, cell, lua[rows], seconds))
        cells.append(cell_summary(cell, by_key))
    return cells


def cell_summary(
    cell: tuple[str, int, int], by_key: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    model, rows, c = cell
    base = by_key[BASELINE]
    servers = {}
    for key, runs in by_key.items():
        # the CPU it spent during the other servers' runs of this cell (its log writer's)
        background = sum(
            x["idle_cpu_s"][key] for k, others in by_key.items() if k != key for x in others
        )
        requests = sum(x["requests"] for x in runs)
        servers[key] = {
            **{m: median([x[m] for x in runs]) for m in METRICS},
            "non_2xx": sum(x["non_2xx"] for x in runs),
            "socket_errors": sum(x["socket_errors"] for x in runs),
            "other_cpu_share": median(
                [x["other_cpu_on_server_core_s"] / x["duration_s"] for x in runs]
            ),
            "background_cpu_s": background,
            "cell_cpu_us_per_req": (sum(x["server_cpu_s"] for x in runs) + background)
            * 1e6
            / max(requests, 1),
            "vs_baseline": {
                m: paired_ratio([x[m] for x in runs], [x[m] for x in base]) for m in METRICS
            },
            "runs": runs,
        }
    return {"model": model, "rows": rows, "concurrency": c, "servers": servers}


# -- after the load ----------------------------------------------------------------------------


def answered(server: Server) -> dict[str, Any]:
    """Requests (by status code) and rows the server answered, per model, from /metrics."""
    status, raw = http_request(server.port, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"{server.spec.key}: /metrics answered {status}")
    out: dict[str, Any] = {m: {"requests": {}, "rows": 0} for m in MODELS}
    for family in text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            model = s.labels.get("model")
            if model not in out:
                continue
            if s.name == "tandem_requests_total":
                codes = out[model]["requests"]
                codes[s.labels["code"]] = codes.get(s.labels["code"], 0) + int(s.value)
            elif s.name == "tandem_rows_total":
                out[model]["rows"] = int(s.value)
    return out


def stop_counted(server: Server, timeout: float = 60.0) -> dict[str, float]:
    """SIGTERM (the server writes what its log holds, then exits) and wait; the process's CPU
    seconds over its whole life come from wait4, so the last flush is counted too."""
    proc = server.proc
    assert proc is not None
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - sent > timeout:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    exited = time.perf_counter() - sent
    server.stop()  # ends whatever of its process tree outlived it
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "exit_s": exited,
        "returncode": proc.returncode,
    }


def read_back(home: Path) -> dict[str, Any]:
    """What each model's log holds once the server has exited, and its size on disk."""
    import pyarrow.compute as pc

    import tandem
    from tandem.errors import DataError
    from tandem.monitoring.predictions import REQUEST_ID, log_folder, read_log

    settings = tandem.Settings(home=home)
    out = {}
    for model in MODELS:
        try:  # reading compacts the hot files into Parquet first
            table = read_log(model, settings=settings)
        except DataError:
            rows = requests = 0
        else:
            rows, requests = table.num_rows, len(pc.unique(table.column(REQUEST_ID)))
        files = sorted(log_folder(model, settings).rglob("*.parquet"))
        size = sum(f.stat().st_size for f in files)
        out[model] = {
            "rows": rows,
            "requests": requests,
            "files": len(files),
            "bytes": size,
            "bytes_per_row": size / rows if rows else None,
        }
    return out


# -- in-process --------------------------------------------------------------------------------


def in_process(registry: Any, home: Path, rounds: int, profile: bool) -> dict[str, Any]:
    """Per request, what ``sampled()`` + ``add()`` costs, and ``add_batch()`` in batches of
    :data:`BATCHED` (the request path's share); per row,
    the writer's ``flush()`` (build the table, write Parquet, rename) and the bytes it leaves
    on disk; pinned to core 0. About 64,000 distinct random rows a round (wrk repeats one body,
    which compresses to almost nothing on disk), as a 4 s run queues at 1 or 32 rows a request.
    ``profile``: where one flush spends its time, by function."""
    import tandem
    from tandem.monitoring.predictions import (
        HOT_SUFFIX,
        Layout,
        LogOptions,
        PredictionLog,
        compact_log,
        log_folder,
    )

    predictor = tandem.load("w1", registry=registry, threads=1)
    manifest = predictor.manifest
    layout = Layout.of("w1", manifest.version, manifest.inputs, predictor.output_columns)
    hold = LogOptions(flush_s=3600.0, flush_rows=10**9, max_queued_rows=10**9)
    settings = tandem.Settings(home=home)
    x = np.random.default_rng(1).standard_normal((64_000, len(manifest.inputs)))
    scored = predictor.decode(predictor.forward(predictor.encode(predictor.preprocess(x))))
    out: dict[str, Any] = {}
    with pinned(SERVER_CORE):
        for n in BATCH_ROWS:
            # one feed per request, the outputs views of one batch's, as the server has them
            requests = [
                (
                    predictor.encode(predictor.preprocess(x[i : i + n])),
                    {k: v[i : i + n] for k, v in scored.items()},
                )
                for i in range(0, len(x), n)
            ]
            # the same rows as the server's batches of BATCHED requests: one add_batch a batch
            batches = [
                (
                    predictor.encode(predictor.preprocess(x[i : i + n * BATCHED])),
                    {k: v[i : i + n * BATCHED] for k, v in scored.items()},
                )
                for i in range(0, len(x), n * BATCHED)
            ]
            plog = PredictionLog("serve", hold, settings=settings)
            add_s, flush_s, batch_s = [], [], []
            try:
                for r in range(rounds + profile):
                    started = time.perf_counter()
                    for i, (feed, outputs) in enumerate(requests):
                        if plog.sampled():
                            plog.add(layout, f"bench-{r}-{i}", feed, outputs, n)
                    added = time.perf_counter()
                    if r == rounds:  # one more round, profiled, out of the timings
                        out[f"profile_{n}"] = flush_profile(plog, len(x))
                        continue
                    plog.flush()
                    add_s.append((added - started) / len(requests))
                    flush_s.append((time.perf_counter() - added) / len(x))
                    started = time.perf_counter()
                    for i, (feed, outputs) in enumerate(batches):
                        # as the server: one draw a request, then one call a batch
                        answered = [
                            (f"bench-{r}-{i}-{j}", j * n, n)
                            for j in range(BATCHED)
                            if plog.sampled()
                        ]
                        plog.add_batch(layout, feed, outputs, answered)
                    batch_s.append((time.perf_counter() - started) / len(requests))
                    plog.flush()
            finally:
                plog.close()
            root = log_folder("w1", settings)
            hot = sum(f.stat().st_size for f in root.rglob(f"*{HOT_SUFFIX}"))
            started = time.perf_counter()
            compact_log("w1", settings)  # what the first reader does, off the server
            compact_s = time.perf_counter() - started
            size = sum(f.stat().st_size for f in root.rglob("*.parquet"))
            shutil.rmtree(root)
            out[str(n)] = {
                "hot_bytes_per_row": hot / plog.written_rows,
                "compact_us_per_row": compact_s / plog.written_rows * 1e6,
                "requests_per_round": len(requests),
                "add_us_per_request": median(add_s) * 1e6,
                "add_batch_us_per_request": median(batch_s) * 1e6,
                "flush_us_per_row": median(flush_s) * 1e6,
                "flush_us_per_request": median(flush_s) * n * 1e6,
                "bytes_per_row": size / plog.written_rows,
            }
    return out


def flush_profile(plog: Any, rows: int, top: int = 8) -> list[dict[str, Any]]:
    """The functions one ``flush()`` spent the most time in (own time, µs per row)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    plog.flush()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    ranked = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [
        {"function": f"{Path(file).name}:{line}({name})", "us_per_row": own * 1e6 / rows}
        for (file, line, name), (_, _, own, _, _) in ranked
    ]


# -- report ------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    keys = list(results["servers"])
    s = results["settings"]
    print(
        f"\nClosed loop (wrk -t1 on core 1; each server on core {SERVER_CORE}); medians of "
        f"{s['rounds']} round(s) of {s['seconds']}s; on/off = median of per-round ratios to "
        f"{BASELINE}\n"
    )
    rows = []
    for cell in results["load"]:
        off, on = cell["servers"][BASELINE], cell["servers"][OURS]
        ratio = on["vs_baseline"]["rps"]
        row = [
            cell["model"],
            cell["rows"],
            cell["concurrency"],
            f"{off['rps']:.0f}",
            f"{on['rps']:.0f}",
            f"{ratio:.3f}",
            "met" if ratio >= GOAL_RATIO else "MISSED",
            f"{off['p99_ms']:.2f}",
            f"{on['p99_ms']:.2f}",
            f"{off['cell_cpu_us_per_req']:.0f}",
            f"{on['cell_cpu_us_per_req']:.0f}",
            f"{off['cell_cpu_us_per_req'] / on['cell_cpu_us_per_req']:.3f}",
        ]
        for key in keys[2:]:
            other = cell["servers"][key]
            row.append(f"{other['rps']:.0f} ({other['vs_baseline']['rps']:.3f})")
        row.append(f"{median([x['other_cpu_share'] for x in cell['servers'].values()]):.0%}")
        rows.append(row)
    headers = ["model", "rows", "c", "req/s off", "req/s on", "on/off", f"≥{GOAL_RATIO:.0%}"]
    headers += ["p99 off", "p99 on", "CPU µs/req off", "on", "CPU off/on"]
    headers += [f"{k} req/s (×off)" for k in keys[2:]] + ["other"]
    print(text_table(headers, rows))
    errors = sum(
        x["non_2xx"] + x["socket_errors"] for c in results["load"] for x in c["servers"].values()
    )
    print(
        f"non-2xx responses and socket errors over all runs: {errors}. CPU µs/req: the "
        "server's CPU over its runs of the cell plus what it used during the other servers' "
        "runs of it (its log writer's), over the requests of its runs"
    )

    print("\nAfter the load: answered (/metrics), logged (read_log after SIGTERM), CPU\n")
    rows = []
    for key, info in results["servers"].items():
        for model in MODELS:
            a, lg = info["answered"][model], info["logged"][model]
            requests = sum(a["requests"].values())
            ok = a["requests"].get("200", 0)
            rows.append(
                [
                    key,
                    model,
                    f"{requests:,}",
                    f"{a['rows']:,}",
                    f"{lg['rows']:,}",
                    f"{a['rows'] - lg['rows']:,}" if key == OURS else "-",
                    f"{lg['requests'] / ok:.4f}" if ok else "-",
                    lg["files"],
                    f"{info['all_in_cpu_us_per_req']:.0f}",
                    f"{info['background_cpu_s']:.2f}",
                    f"{info['stop']['exit_s']:.2f}",
                    f"{info['rss_after_load_bytes']['tree'] / 2**20:.0f}",
                ]
            )
    headers = ["server", "model", "requests", "rows answered", "rows logged", "missing"]
    headers += ["requests logged share", "files", "all-in CPU µs/req"]
    headers += ["background CPU s", "exit s", "RSS MB"]
    print(text_table(headers, rows))
    print(
        "all-in CPU: from ready to exit (wait4), over every request answered (both models); "
        "background: CPU the server used during the other servers' runs"
    )

    print("\nIn-process, W1, distinct random rows, pinned to core 0 (median of rounds)\n")
    sizes = [n for n in results["in_process"] if n.isdigit()]
    rows = [
        [
            n,
            f"{r['add_us_per_request']:.2f}",
            f"{r['add_batch_us_per_request']:.2f}",
            f"{r['flush_us_per_row']:.2f}",
            f"{r['flush_us_per_request']:.1f}",
            f"{r['hot_bytes_per_row']:.0f}",
            f"{r['compact_us_per_row']:.2f}",
            f"{r['bytes_per_row']:.0f}",
        ]
        for n, r in ((n, results["in_process"][n]) for n in sizes)
    ]
    headers = ["rows/request", "sampled()+add() µs/req", f"add_batch µs/req ({BATCHED} a batch)"]
    headers += ["flush µs/row", "flush µs/req"]
    print(text_table([*headers, "hot B/row", "compact µs/row (reader)", "Parquet B/row"], rows))
    for n in sizes:
        profile = results["in_process"].get(f"profile_{n}")
        if profile:
            print(f"\none flush of {n}-row requests, own time by function (µs per row):")
            for p in profile:
                print(f"  {p['us_per_row']:6.2f}  {p['function']}")

    print("\nGoal\n")
    rows = [[g["goal"], g["measured"], "met" if g["met"] else "MISSED"] for g in results["goals"]]
    print(text_table(["goal", "measured", "verdict"], rows))
    twin = [c["servers"][TWIN]["vs_baseline"]["rps"] for c in results["load"]]
    twin_cpu = [
        c["servers"][BASELINE]["cell_cpu_us_per_req"] / c["servers"][TWIN]["cell_cpu_us_per_req"]
        for c in results["load"]
    ]
    off, again = (results["servers"][k]["all_in_cpu_us_per_req"] for k in (BASELINE, TWIN))
    print(
        f"\nNoise floor ({TWIN}, the same server as {BASELINE}): req/s ratio per cell "
        f"{min(twin):.3f}–{max(twin):.3f}, CPU ratio per cell {min(twin_cpu):.3f}–"
        f"{max(twin_cpu):.3f}, all-in {off / again:.3f}"
    )


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    ratios = {
        (c["model"], c["rows"], c["concurrency"]): c["servers"][OURS]["vs_baseline"]["rps"]
        for c in results["load"]
    }
    worst = min(ratios, key=ratios.__getitem__)
    on, off = (results["servers"][k]["all_in_cpu_us_per_req"] for k in (OURS, BASELINE))
    complete = all(
        results["servers"][OURS]["logged"][m]["rows"]
        == results["servers"][OURS]["answered"][m]["rows"]
        for m in MODELS
    )
    return [
        {
            "goal": f"throughput with the log on ≥ {GOAL_RATIO:.0%} of off, every cell",
            "measured": f"{sum(r >= GOAL_RATIO for r in ratios.values())} of {len(ratios)} "
            f"cells; lowest {ratios[worst]:.3f} ({worst[0]}, {worst[1]} rows, c={worst[2]})",
            "met": min(ratios.values()) >= GOAL_RATIO,
        },
        {
            "goal": f"capacity from all-in CPU per request ≥ {GOAL_RATIO:.0%} of off",
            "measured": f"{off:.0f} / {on:.0f} µs = {off / on:.3f}",
            "met": off / on >= GOAL_RATIO,
        },
        {
            "goal": "every answered row logged (sample 1)",
            "measured": ", ".join(
                f"{m}: {results['servers'][OURS]['logged'][m]['rows']:,} of "
                f"{results['servers'][OURS]['answered'][m]['rows']:,}"
                for m in MODELS
            ),
            "met": complete,
        },
    ]


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~2 min smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; quick 1)")
    parser.add_argument(
        "--seconds", type=int, default=None, help="seconds per wrk run (default 4; quick 2)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per cell")
    parser.add_argument(
        "--diagnose", action="store_true", help=f"add {NO_WRITE}: the log without its writes"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    seconds = args.seconds or (2 if args.quick else 4)
    if load_test_unavailable():
        return 2
    started = time.perf_counter()

    import tandem

    table, rows_eval = make_data(4000)
    bodies = {n: oip_body(np.ascontiguousarray(rows_eval[:n])) for n in BATCH_ROWS}
    specs = server_specs(args.diagnose)
    results: dict[str, Any] = {
        "script": SCRIPT,
        "quick": args.quick,
        "settings": {
            "rounds": rounds,
            "seconds": seconds,
            "warmup": args.warmup,
            "cells": [dict(zip(("model", "rows", "concurrency"), c, strict=True)) for c in CELLS],
            "server_core": SERVER_CORE,
        },
        "goal_ratio": GOAL_RATIO,
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="tandem-bench-predlog-") as tmp_name:
        tmp = Path(tmp_name)
        trained = tmp / "trained"
        registry = tandem.Registry(tandem.Settings(home=trained))
        try:
            results["models"] = train_models(registry, table, 3.0 if args.quick else 5.0)
            print("timing the log in-process ...", flush=True)
            results["in_process"] = in_process(registry, tmp / "micro", 3, args.diagnose)
        finally:
            registry.close()

        src = Path(tandem.__file__).resolve().parent.parent
        pythonpath = [str(src), str(BENCH_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
        log_dir = tmp / "logs"
        log_dir.mkdir()
        lua = wrk_scripts(tmp, bodies)

        servers: dict[str, Server] = {}
        ready_cpu: dict[str, float] = {}
        try:
            for spec in specs:
                home = tmp / spec.key
                shutil.copytree(trained, home)
                env = {**os.environ, "TANDEM_HOME": str(home)}
                env["PYTHONPATH"] = os.pathsep.join(pythonpath)
                server = servers[spec.key] = Server(spec, env, log_dir)
                ready = server.start()
                ready_cpu[spec.key] = server.cpu_seconds()
                smoke(server, bodies[1])
                results["servers"][spec.key] = {
                    "describe": spec.describe,
                    "argv": spec.argv(server.port),
                    "sample": float(spec.template[-1]),
                    "ready_s": ready,
                }
                print(f"started {spec.key} on :{server.port} in {ready:.2f}s", flush=True)
            results["load"] = load_runs(servers, lua, rounds, seconds, args.warmup)
            for key, server in servers.items():
                info = results["servers"][key]
                info["rss_after_load_bytes"] = server.rss()
                info["answered"] = answered(server)
                info["stop"] = stop_counted(server)
                info["logged"] = read_back(tmp / key)
                requests = sum(sum(a["requests"].values()) for a in info["answered"].values())
                info["all_in_cpu_us_per_req"] = (
                    (info["stop"]["cpu_s"] - ready_cpu[key]) * 1e6 / requests
                )
                info["background_cpu_s"] = sum(
                    cell["servers"][key]["background_cpu_s"] for cell in results["load"]
                )
        finally:
            for server in servers.values():
                server.stop()

    results["goals"] = goals(results)
    report(results)
    save_results(SCRIPT, results, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
