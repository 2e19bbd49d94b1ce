"""Prediction log, paired: two servers share one core at the same time, one with the log.

Claim under test (issue goal): serving throughput with the prediction log on (every request
logged) stays ≥ 95 % of the same server with it off.

Why paired: ``bench_predlog.py`` runs its servers one after another, and on this shared
machine the speed of the core drifts between runs by more than the log costs (its A/A pair
of identical servers read 0.92–1.26 per cell). Here the two servers of a pair are pinned to
the same core and loaded by two wrk processes (on the other core) during the same seconds,
so whatever slows the core slows both. Per round, the pair's ratios: requests answered
(throughput while they share the core) and CPU seconds per request from ``/proc`` (the cost;
on a core of its own, a saturated server's throughput is its inverse, so this is the
capacity ratio), and how much of it the serving (main) thread spent, the rest being other
threads' (the log's writer, and the batcher's worker where batches run off the event loop,
as 32-row ones do at 64 connections), and each server's resident memory after its rounds
(what the log holds: its buffers, and pyarrow's import of pandas), and the tail latency wrk
saw (p99, on over off: what the writer's bursts on the shared core cost a request that waits
behind them). Each pair starts fresh
servers, and each cell and kind runs two pairs (``--pairs``): a process keeps its own state
(the batcher's choice of running batches inline or on its worker, its memory's layout) for
all its rounds, and one pair once read CPU 0.925 for sampling 0.1 at W1/32/8 in all four of
its rounds, where the run before read 0.980 and the two versions of the log, head to head
for 12 rounds, 1.002. An **A/A pair** (the log off in both) shows what the method cannot
resolve, process to process. Each pair warms up until its logging server has written its
first file (the log's one-time start: see ``Pair.warm_up``); the warm-up's own CPU ratio is
reported in a column of its own.

Pairs per cell: off/off (A/A), off/sample 1 (ours, the default), off/sample 0.1. Models and
bodies as bench_predlog: W1 and the 200-tree LightGBM model, one OIP body of 1 or 32 rows,
closed loop at 8 or 64 connections.

    PYTHONPATH=src python benchmarks/bench_predlog_paired.py [--pairs 2] [--rounds 3] [--seconds 4]
    PYTHONPATH=src python benchmarks/bench_predlog_paired.py --pool run1.json run2.json ...

(~13 min by default; ``--pool`` measures nothing and reports saved runs as one.) Needs wrk
and taskset and 2 cores. Results also go to ``benchmarks/out/bench_predlog_paired.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _common import load_test_unavailable, median, save_results, text_table, train_models  # noqa: E402
from bench_predlog import log_spec  # noqa: E402
from bench_serving import (  # noqa: E402
    CLK_TCK,
    Server,
    http_request,
    make_data,
    oip_body,
    socket_errors,
    stat_fields,
    wrk_argv,
    wrk_result,
    wrk_scripts,
)
from tandem.monitoring.predictions import HOT_SUFFIX  # noqa: E402

SCRIPT = "bench_predlog_paired"
GOAL_RATIO = 0.95
#: (model, rows per request, connections), as bench_predlog
CELLS = (
    ("w1", 1, 8),
    ("w1", 1, 64),
    ("gbdt", 1, 64),
    ("gbdt", 32, 64),
    ("w1", 32, 64),
    ("w1", 32, 8),
)
#: (name, sample of the second server); the first server of every pair has the log off
PAIRS = (("A/A", "0"), ("log 1", "1"), ("log 0.1", "0.1"))


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process's main thread (the event loop, which serves)."""
    fields = stat_fields(pid, thread=pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


#: the longest warm-up (the log writes every 10 s at least, so its first file is due by 10)
WARM_UP_S = 14


def written(folder: Path) -> bool:
    """Whether the log under ``folder`` has written a file (a hot one: a server never
    compacts its log)."""
    return any(folder.glob(f"*/date=*/*{HOT_SUFFIX}"))


#: the /metrics families a round with errors prints, of the loaded model: the batcher's cost
#: lines and maximum batch, and the requests it answered by status
BATCHER_STATE = ("tandem_max_batch", "tandem_cost", "tandem_compute_cost", "tandem_requests_total")


def cpu_ratio(round_: list[dict[str, float]]) -> float:
    """A round's CPU a request, off over on (each round: [off, on])."""
    return round_[0]["cpu_us_per_request"] / round_[1]["cpu_us_per_request"]


class Pair:
    """Two ``tandem serve w1 gbdt --threads 1`` on the server core, each with its registry
    copy."""

    def __init__(self, trained: Path, tmp: Path, samples: tuple[str, str]) -> None:
        src = Path(__file__).resolve().parent.parent / "src"
        log_dir = tmp / "logs"
        log_dir.mkdir(exist_ok=True)
        self.servers: list[Server] = []
        #: where each server with the log on logs
        self.logging: list[Path] = []
        try:
            for k, sample in enumerate(samples):
                home = tmp / f"home-{k}"
                shutil.rmtree(home, ignore_errors=True)
                shutil.copytree(trained, home)
                env = {**os.environ, "TANDEM_HOME": str(home), "PYTHONPATH": str(src)}
                server = Server(log_spec(f"pair-{k}", sample, "paired"), env, log_dir)
                self.servers.append(server)
                if float(sample) > 0:
                    self.logging.append(home / "predictions")
                server.start()
        except BaseException:
            self.stop()
            raise

    def warm_up(self, lua: Path, model: str, c: int) -> list[list[dict[str, float]]]:
        """Load both servers in 2 s rounds until each one that logs has written its first
        file (at most :data:`WARM_UP_S`, at least one round); the rounds' figures.

        Why: a log's first writes fault in its buffers' pages (the column buffers and the
        file buffer, ~25 MB each at 100,000 rows of 33 columns) and make the batch-size
        records' first buffers: 0.1-0.2 s of CPU once in a server's life. A 4 s round
        after a fixed 2 s warm-up counted them in some pairs and not others (at 32-row
        requests the first write comes about 2 s in): the writer's CPU a request read 9-12
        µs in such a round and 3 in the rounds after. The goal is the steady throughput;
        the warm-up's own ratio is reported beside it."""
        rounds = []
        deadline = time.monotonic() + WARM_UP_S
        while True:
            rounds.append(self.load(lua, model, c, 2))
            if time.monotonic() >= deadline or all(map(written, self.logging)):
                return rounds

    def load(self, lua: Path, model: str, c: int, seconds: int) -> list[dict[str, float]]:
        """Both servers loaded for the same ``seconds``: requests and CPU seconds of each."""
        pids = [s.proc.pid for s in self.servers if s.proc is not None]
        before = [
            (s.cpu_seconds(), main_thread_cpu_seconds(p))
            for s, p in zip(self.servers, pids, strict=True)
        ]
        runs = [
            subprocess.Popen(
                wrk_argv(s.port, model, lua, c, seconds),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for s in self.servers
        ]  # fmt: skip
        outputs = [(r.communicate(), r.returncode) for r in runs]
        after = [
            (s.cpu_seconds(), main_thread_cpu_seconds(p))
            for s, p in zip(self.servers, pids, strict=True)
        ]
        results = [wrk_result(code, stdout, stderr) for (stdout, stderr), code in outputs]
        if any(r["status"] or socket_errors(r) for r in results):
            raise RuntimeError("wrk saw errors:\n" + self.state(model, results))
        out = []
        for r, a, b in zip(results, before, after, strict=True):
            requests = max(int(r["requests"]), 1)
            out.append(
                {
                    "requests": requests,
                    "cpu_us_per_request": (b[0] - a[0]) * 1e6 / requests,
                    "main_us_per_request": (b[1] - a[1]) * 1e6 / requests,
                    "p50_us": float(r["p50_us"]),
                    "p99_us": float(r["p99_us"]),
                }
            )
        return out

    def state(self, model: str, results: list[dict[str, Any]]) -> str:
        """Each server's wrk figures, batcher state (from ``/metrics``) and log's tail: what
        a round with errors needs to be told apart from a noisy neighbour."""
        lines = []
        for server, r in zip(self.servers, results, strict=True):
            lines.append(f"{server.spec.key}: {r}")
            try:
                _, raw = http_request(server.port, "GET", "/metrics")
            except OSError as exc:
                lines.append(f"  /metrics: {exc}")
            else:
                lines += [
                    f"  {line}"
                    for line in raw.decode().splitlines()
                    if line.startswith(BATCHER_STATE) and f'model="{model}"' in line
                ]
            lines.append("  log: " + server.log_tail(800).replace("\n", "\n  "))
        return "\n".join(lines)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def measure(
    trained: Path, tmp: Path, lua: dict[int, Path], pairs: int, rounds: int, seconds: int
) -> list[dict[str, Any]]:
    cells = []
    for n, (model, rows, c) in enumerate(CELLS):
        print(f"cell {n + 1}/{len(CELLS)}: {model}, {rows} row(s), c={c}", flush=True)
        cell: dict[str, Any] = {"model": model, "rows": rows, "concurrency": c, "pairs": {}}
        for name, sample in PAIRS:
            runs, rss, start = [], [0.0, 0.0], []
            for _ in range(pairs):  # fresh processes: a pair's own state lasts its rounds
                pair = Pair(trained, tmp, ("0", sample))
                try:
                    start += pair.warm_up(lua[rows], model, c)
                    runs += [pair.load(lua[rows], model, c, seconds) for _ in range(rounds)]
                    # MB after the load, the largest of the pairs
                    rss = [
                        max(m, s.rss()["main"] / 2**20)
                        for m, s in zip(rss, pair.servers, strict=True)
                    ]
                finally:
                    pair.stop()
            cell["pairs"][name] = summary(sample, runs, [cpu_ratio(r) for r in start], rss)
        cells.append(cell)
    return cells


def summary(
    sample: str, runs: list[list[dict[str, float]]], warm_up: list[float], rss: list[float]
) -> dict[str, Any]:
    """One cell and kind: medians of its rounds' ratios (each round: [off, on])."""
    rps = [r[1]["requests"] / r[0]["requests"] for r in runs]
    cpu = [cpu_ratio(r) for r in runs]
    return {
        "sample": sample,
        "throughput_ratio": median(rps),
        "throughput_range": [min(rps), max(rps)],
        "cpu_ratio": median(cpu),
        "cpu_range": [min(cpu), max(cpu)],
        "cpu_us_per_request_off": median([r[0]["cpu_us_per_request"] for r in runs]),
        "cpu_us_per_request_on": median([r[1]["cpu_us_per_request"] for r in runs]),
        # of which the serving (main) thread's; the rest, other threads (the writer)
        "main_us_per_request_off": median([r[0]["main_us_per_request"] for r in runs]),
        "main_us_per_request_on": median([r[1]["main_us_per_request"] for r in runs]),
        # the warm-up's rounds: the log's one-time start included (see Pair.warm_up)
        "warm_up_cpu_ratio": median(warm_up),
        "warm_up_cpu_ratios": warm_up,
        "rss_mb_off": rss[0],
        "rss_mb_on": rss[1],
        **latency(runs),
        "runs": runs,
    }


def latency(runs: list[list[dict[str, float]]]) -> dict[str, float]:
    """The pair's tail latency: medians of its rounds' p50 and p99 (ms), and of the rounds'
    p99 ratios, on over off; none for runs saved before they were recorded."""
    if not runs or any("p99_us" not in s for r in runs for s in r):
        return {}
    return {
        "p50_ms_off": median([r[0]["p50_us"] for r in runs]) / 1e3,
        "p50_ms_on": median([r[1]["p50_us"] for r in runs]) / 1e3,
        "p99_ms_off": median([r[0]["p99_us"] for r in runs]) / 1e3,
        "p99_ms_on": median([r[1]["p99_us"] for r in runs]) / 1e3,
        "p99_ratio": median([r[1]["p99_us"] / max(r[0]["p99_us"], 1.0) for r in runs]),
    }


def pool(paths: list[Path]) -> dict[str, Any]:
    """Earlier runs' results as one run: each cell's rounds, from all their pairs, together.

    Why: a run has two pairs a cell, and a pair's own state (its memory's layout, the
    batcher's choices) lasts its rounds, so a cell's figure scatters from run to run by about
    a point (the A/A column shows it); the log's cost is measured closer by more pairs."""
    loaded = []
    for path in paths:
        try:
            loaded.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"cannot read {path}: {exc}; give results files of this script"
            ) from None
    for path, r in zip(paths, loaded, strict=True):
        cells = [(c["model"], c["rows"], c["concurrency"]) for c in r.get("cells", [])]
        if r.get("script") != SCRIPT or cells != list(CELLS):
            raise ValueError(f"{path} is not a full run of {SCRIPT} with this version's cells")
    pooled = []
    for k, (model, rows, c) in enumerate(CELLS):
        cell: dict[str, Any] = {"model": model, "rows": rows, "concurrency": c, "pairs": {}}
        for name, sample in PAIRS:
            kinds = [r["cells"][k]["pairs"][name] for r in loaded]
            cell["pairs"][name] = summary(
                sample,
                [run for x in kinds for run in x["runs"]],
                [w for x in kinds for w in x.get("warm_up_cpu_ratios", [x["warm_up_cpu_ratio"]])],
                [max(x["rss_mb_off"] for x in kinds), max(x["rss_mb_on"] for x in kinds)],
            )
        pooled.append(cell)
    pairs = sum(r["settings"]["pairs_a_cell"] for r in loaded)
    print(f"pooled: {len(loaded)} runs, {pairs} fresh pairs a cell and kind")
    return {
        "script": SCRIPT,
        "goal_ratio": GOAL_RATIO,
        "pooled_from": [str(p) for p in paths],
        "settings": {**loaded[0]["settings"], "pairs_a_cell": pairs},
        "cells": pooled,
    }


def report(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for cell in cells:
        p = cell["pairs"]
        row = [cell["model"], cell["rows"], cell["concurrency"]]
        for name, _ in PAIRS:
            x = p[name]
            row += [f"{x['throughput_ratio']:.3f}", f"{x['cpu_ratio']:.3f}"]
        on = p["log 1"]
        row += [f"{on['cpu_us_per_request_off']:.0f} → {on['cpu_us_per_request_on']:.0f}"]
        main = on["main_us_per_request_on"] - on["main_us_per_request_off"]
        other = (on["cpu_us_per_request_on"] - on["main_us_per_request_on"]) - (
            on["cpu_us_per_request_off"] - on["main_us_per_request_off"]
        )
        row += [f"{main:+.1f}", f"{other:+.1f}", f"{on['rss_mb_off']:.0f} → {on['rss_mb_on']:.0f}"]
        row += [f"{on['warm_up_cpu_ratio']:.3f}"]
        row += [tail(on), tail(p["A/A"])]
        rows.append(row)
    headers = ["model", "rows", "c"]
    for name, _ in PAIRS:
        headers += [f"{name}: req/s ×off", "CPU off/on"]
    headers += [
        "log 1: CPU µs/req off → on", "of it: serving thread", "other threads", "RSS MB off → on",
        "log 1: CPU off/on in warm-up", "log 1: p99 ms off → on (×)", "A/A: p99 (×)",
    ]  # fmt: skip
    print("\nPairs sharing one core, loaded at the same time (medians of rounds)\n")
    print(text_table(headers, rows))
    aa = [c["pairs"]["A/A"]["cpu_ratio"] for c in cells]
    goals = []
    for name, _ in PAIRS[1:]:
        thr = [c["pairs"][name]["throughput_ratio"] for c in cells]
        cpu = [c["pairs"][name]["cpu_ratio"] for c in cells]
        goals.append(
            {
                "goal": f"{name}: throughput ≥ {GOAL_RATIO:.0%} of off, every cell",
                "measured": f"req/s {min(thr):.3f}–{max(thr):.3f}; CPU {min(cpu):.3f}–{max(cpu):.3f}",
                "met": min(thr) >= GOAL_RATIO and min(cpu) >= GOAL_RATIO,
            }
        )
    print(
        f"\nA/A (both off): CPU ratio {min(aa):.3f}–{max(aa):.3f} across cells: the spread "
        "the method leaves, process to process\n"
    )
    rows = [[g["goal"], g["measured"], "met" if g["met"] else "MISSED"] for g in goals]
    print(text_table(["goal (both req/s and CPU)", "measured", "verdict"], rows))
    return goals


def tail(kind: dict[str, Any]) -> str:
    """A kind's p99, off → on, and the median of its rounds' ratios ("-" where not recorded)."""
    if "p99_ratio" not in kind:
        return "-"
    return f"{kind['p99_ms_off']:.1f} → {kind['p99_ms_on']:.1f} ({kind['p99_ratio']:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2, help="fresh pairs a cell and kind")
    parser.add_argument("--rounds", type=int, default=3, help="rounds a pair")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument(
        "--pool", type=Path, nargs="+", metavar="JSON",
        help="measure nothing: report earlier runs' results files as one run of all their pairs",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.pool:
        try:
            results = pool(args.pool)
        except ValueError as exc:
            parser.error(str(exc))
        results["goals"] = report(results["cells"])
        save_results(f"{SCRIPT}_pooled", results, started)
        return 0
    if load_test_unavailable():
        return 2
    import tandem

    table, rows_eval = make_data(4000)
    results: dict[str, Any] = {"script": SCRIPT, "goal_ratio": GOAL_RATIO}
    results["settings"] = {
        "pairs_a_cell": args.pairs,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "pairs": PAIRS,
    }
    with tempfile.TemporaryDirectory(prefix="tandem-bench-paired-") as tmp_name:
        tmp = Path(tmp_name)
        trained = tmp / "trained"
        registry = tandem.Registry(tandem.Settings(home=trained))
        try:
            results["models"] = train_models(registry, table, 5.0)
        finally:
            registry.close()
        rows = sorted({rows for _, rows, _ in CELLS})
        bodies = {n: oip_body(np.ascontiguousarray(rows_eval[:n])) for n in rows}
        lua = wrk_scripts(tmp, bodies)
        results["cells"] = measure(trained, tmp, lua, args.pairs, args.rounds, args.seconds)
    results["goals"] = report(results["cells"])
    save_results(SCRIPT, results, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
