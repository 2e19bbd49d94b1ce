"""The cost ledger: what metering costs, and whether a projection holds.

    PYTHONPATH=src python benchmarks/bench_ledger.py [--quick]   # ~10 min; --quick ~4

1. **Meter overhead** (goal: < 1 %).
   * Training: the same LightGBM and MLP fits with and without the per-epoch meter
     (``EpochLog`` laps), interleaved, median ratio of fit times; and the direct figure:
     laps × the measured cost of one lap ÷ the fit's time.
   * Serving: the CPU time of one ledger record (a flush: Prometheus deltas, /proc reads, one
     SQLite transaction) ÷ the recording interval (60 s by default; 1 s shown too).
2. **Projection vs a held-out run** (goal: within ±10 %), repeated in pairs (a short run,
   then the held-out runs it predicts) because this machine drifts within minutes.
   * Serving: a real ``tandem serve`` process (pinned to one CPU, the load generator on the
     other) records 1-s intervals through a short run (idle, then open-loop at rate R1); the
     report's fitted model (idle CPU rate + CPU per request) then predicts what a longer run at
     another rate R2 costs; the longer run is measured and priced from its own records.
   * Training: the ledger's retrain projection (a retrain costs what the measured run did):
     each run's cost against the next run of the same recipe, measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, markdown_table, median, text_table, write_json

ROOT = Path(__file__).resolve().parents[1]
LOADGEN = ROOT / "src" / "tandem" / "serving" / "loadgen.py"


# -- 1. overhead ------------------------------------------------------------------------------------


def fit_overhead(rounds: int) -> list[dict[str, Any]]:
    from tandem.ledger.meter import Meter
    from tandem.ledger.records import EpochLog
    from tandem.models import FAMILIES, FitContext
    from tandem.training.loop import LoopConfig

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 16))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=len(X)) > 0).astype(np.int64)
    Xv, yv = X[:4000], y[:4000]
    cases = {
        # patience = rounds: every round runs, ~1 ms each: the most laps per second of any family
        "gbdt, 400 rounds": lambda: FAMILIES["gbdt"](max_rounds=400, patience=400),
        "mlp, 20 epochs": lambda: FAMILIES["mlp"](
            hidden=64, config=LoopConfig(max_epochs=20, patience=20)
        ),
    }
    rows = []
    with Meter() as meter:
        lap_cost = min(_time_laps(meter) for _ in range(5))
    for name, make in cases.items():
        times: dict[str, list[float]] = {"off": [], "on": []}
        laps = 0
        for r in range(rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                with Meter() as m:
                    log = EpochLog(m)
                    ctx = FitContext(task="classification", n_classes=2, seed=0,
                                     deadline=float("inf"),
                                     on_epoch=log.fit(name, "fit") if mode == "on" else None)  # fmt: skip
                    started = time.perf_counter()
                    make().fit(X[4000:], y[4000:], Xv, yv, ctx)
                    times[mode].append(time.perf_counter() - started)
                    if mode == "on":
                        laps = len(log.fits[0]["epoch"])
        ratio = median([a / b for a, b in zip(times["on"], times["off"], strict=True)])
        fit_s = median(times["on"])
        rows.append({
            "fit": name, "off_s": median(times["off"]), "on_s": fit_s, "ratio": ratio,
            "laps": laps, "lap_us": lap_cost * 1e6, "direct_overhead": laps * lap_cost / fit_s,
        })  # fmt: skip
    return rows


def _time_laps(meter: Any, n: int = 100_000) -> float:
    started = time.perf_counter()
    for _ in range(n):
        meter.lap()
    return (time.perf_counter() - started) / n


def flush_overhead(samples: int) -> dict[str, float]:
    """CPU seconds of one serving record, measured on a real in-process server."""
    import asyncio

    import orjson

    import tandem
    from tandem import Registry, Settings
    from tandem.serving import ServeOptions, Server
    from tandem.serving.loadtest import closed_loop

    with (
        tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp,
        Registry(Settings(home=Path(tmp))) as reg,
    ):
        tandem.train(_table(2000), target="y", name="m", model="linear", registry=reg)

        async def main() -> list[float]:
            server = Server(["m:1"], ServeOptions(port=0, ledger_interval_s=3600), registry=reg)
            await server.start()
            await server.ready.wait()
            rows = _table(200).drop_columns(["y"]).to_pylist()
            bodies = [orjson.dumps({"dataframe_records": [r]}) for r in rows]
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, lambda: closed_loop("127.0.0.1", server.port, "/invocations", bodies)
            )
            assert server.usage is not None
            cpu = []
            for _ in range(samples):
                t0 = time.process_time()
                server.usage.flush()
                cpu.append(time.process_time() - t0)
            await server.stop()
            return cpu

        cpu = asyncio.run(main())
    per = statistics.median(cpu)
    return {"flush_cpu_ms": per * 1e3, "overhead_60s": per / 60, "overhead_1s": per / 1}


def _table(n: int, seed: int = 0) -> Any:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
    return pa.table({**{f"f{i}": X[:, i] for i in range(6)}, "y": y})


# -- 2. projection vs held-out runs -----------------------------------------------------------------


def serving_projection(
    short: list[tuple[float, float]], held_out: list[tuple[float, float]], pairs: int
) -> list[dict[str, Any]]:
    """``pairs`` times over: measure the ``short`` runs, (seconds, req/s) each, after 5 s
    idle, and predict from them each ``held_out`` run that follows. Repeated because this
    machine drifts by more than the goal within minutes: one pair is one sample."""
    import tandem
    from tandem import Registry, Settings
    from tandem.ledger.cost import PriceTable
    from tandem.serving.loadtest import announced_port

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, load_cpu = (str(cpus[0]), str(cpus[1])) if len(cpus) > 1 else (None, None)
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp:
        home = Path(tmp)
        with Registry(Settings(home=home)) as reg:
            tandem.train(_table(4000), target="y", name="m", model="gbdt",
                         params={"max_rounds": 200}, registry=reg)  # fmt: skip
        env = {**os.environ, "TANDEM_HOME": str(home), "PYTHONPATH": str(ROOT / "src")}
        pin = ["taskset", "-c", server_cpu] if server_cpu else []
        proc = subprocess.Popen(
            [*pin, sys.executable, "-c", "from tandem.cli import main; main()", "serve", "m:1",
             "--port", "0", "--ledger-interval", "1"],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        windows = []
        try:
            port = announced_port(proc)
            body = home / "body.json"
            row = _table(1).drop_columns(["y"]).to_pylist()[0]
            body.write_text(json.dumps({"dataframe_records": [row]}))
            url = f"http://127.0.0.1:{port}/invocations"
            for _ in range(pairs):
                for n, (seconds, rate) in enumerate([*short, *held_out]):
                    start = datetime.now(UTC)
                    time.sleep(5 if n == 0 else 1.5)  # the short run starts idle: the idle rate
                    _load(url, body, rate, seconds, load_cpu)
                    time.sleep(2)
                    windows.append((start, datetime.now(UTC)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        prices = PriceTable.load(settings=Settings(home=home))
        with Registry(Settings(home=home)) as reg:
            runs = [r for r in reg.runs("m", 1, phase="serve") if r.details["kind"] == "interval"]

    def within(window: tuple[datetime, datetime]) -> list[Any]:
        # a record belongs to the window it was written in (it covers the second before)
        return [r for r in runs if window[0] < r.finished_at <= window[1]]

    results = []
    per_pair = len(short) + len(held_out)
    for pair in range(pairs):
        mine = windows[pair * per_pair : (pair + 1) * per_pair]
        results += _pair(pair, short, held_out, mine, within, prices)
    return results


def _pair(
    pair: int,
    short: list[tuple[float, float]],
    held_out: list[tuple[float, float]],
    windows: list[tuple[datetime, datetime]],
    within: Any,
    prices: Any,
) -> list[dict[str, Any]]:
    from tandem.ledger.cost import cost_of
    from tandem.ledger.report import _serving, _total, serving_profile

    figures = _serving([r for w in windows[: len(short)] for r in within(w)], prices)
    assert figures is not None
    results = []
    for (seconds, rate), window in zip(held_out, windows[len(short) :], strict=True):
        held = within(window)
        requests = sum(r.details["requests"] for r in held)
        measured = _total(held)
        predicted = serving_profile(figures, seconds=measured.wall_seconds, requests=requests)
        m_cost, p_cost = cost_of(measured, prices), cost_of(predicted, prices)
        results.append({
            "pair": pair + 1,
            "short": {"seconds": sum(x[0] for x in short),
                      "rates": [x[1] for x in short], "requests": figures.requests,
                      "idle_cpu_per_s": figures.idle_cpu_per_s,
                      "cpu_per_request_ms": figures.cpu_per_request * 1e3},
            "held_out": {"seconds": measured.wall_seconds, "load_s": seconds, "rate": rate,
                         "requests": requests},
            "cpu_s": {"predicted": predicted.cpu_seconds, "measured": measured.cpu_seconds},
            "money": {"predicted": p_cost.money, "measured": m_cost.money},
            "error": p_cost.money / m_cost.money - 1,
        })  # fmt: skip
    return results


def _load(url: str, body: Path, rate: float, seconds: float, cpu: str | None) -> dict[str, Any]:
    pin = ["taskset", "-c", cpu] if cpu else []
    done = subprocess.run(
        [*pin, sys.executable, str(LOADGEN), "--url", url, "--body-file", str(body),
         "--content-type", "application/json", "--rate", str(rate), "--duration", str(seconds),
         "--connections", "32"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def training_projection(runs: int) -> dict[str, Any]:
    import tandem
    from tandem import Registry, Settings
    from tandem.ledger.cost import PriceTable, cost_of
    from tandem.ledger.records import profile_of

    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp, \
            Registry(Settings(home=Path(tmp))) as reg:  # fmt: skip
        data = _table(50_000)
        for _ in range(runs):
            tandem.train(data, target="y", name="m", model="gbdt",
                         params={"max_rounds": 300, "patience": 300}, registry=reg)  # fmt: skip
        prices = PriceTable.load(settings=reg.settings)
        costs = [cost_of(profile_of(r), prices).money for r in reg.runs("m", phase="train")]
    # the projection predicts a retrain from the last measured run (the report reads the
    # version's own record): each run predicts the next, predicted / measured - 1
    errors = [a / b - 1 for a, b in itertools.pairwise(costs)]
    return {"costs": costs, "errors": errors,
            "median_abs_error": median([abs(e) for e in errors])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs")
    args = parser.parse_args()
    quick = args.quick
    fits = fit_overhead(rounds=3 if quick else 7)
    flush = flush_overhead(samples=50 if quick else 200)
    # a short run at two rates predicts longer runs at one of them and at a rate between
    # (the cost per request depends on the rate: batching); then, outside the measured
    # rates, what the nearest measured rate gives (the report flags such a projection)
    serving = serving_projection(
        [(10, 200), (10, 800)] if quick else [(15, 200), (15, 800)],
        [(20, 200), (20, 400), (15, 50)] if quick else [(60, 200), (40, 400), (20, 50)],
        pairs=2 if quick else 3,
    )
    training = training_projection(runs=3 if quick else 5)

    print("\n1. meter overhead (goal < 1 %)")
    print(text_table(
        ["fit", "without meter", "with meter", "ratio (median)", "laps", "µs/lap", "laps × lap ÷ fit"],
        [[f["fit"], f"{f['off_s']:.3f} s", f"{f['on_s']:.3f} s", f"{f['ratio']:.4f}", f["laps"],
          f"{f['lap_us']:.2f}", f"{f['direct_overhead']:.3%}"] for f in fits],
    ))  # fmt: skip
    print(f"serving: one record costs {flush['flush_cpu_ms']:.2f} ms CPU: "
          f"{flush['overhead_60s']:.4%} of a core at the default 60 s interval, "
          f"{flush['overhead_1s']:.3%} at 1 s")  # fmt: skip
    print("\n2. projection vs held-out run (goal within ±10 %)")
    print(text_table(
        ["phase", "measured from", "predicts", "predicted", "measured", "error"],
        [
            *[[f"serving {s['pair']}", f"{s['short']['seconds']:.0f} s at {'+'.join(f'{r:.0f}' for r in s['short']['rates'])} req/s "
               f"(idle {s['short']['idle_cpu_per_s']:.2%} core, {s['short']['cpu_per_request_ms']:.3f} ms CPU/req)",
               f"{s['held_out']['load_s']:.0f} s at {s['held_out']['rate']:.0f} req/s "
               f"({s['held_out']['requests']:,} requests)",
               f"{s['cpu_s']['predicted']:.2f} CPU-s, ${s['money']['predicted']:.3e}",
               f"{s['cpu_s']['measured']:.2f} CPU-s, ${s['money']['measured']:.3e}",
               f"{s['error']:+.1%}"] for s in serving],
            *[["training", f"run {i + 1}", f"retrain {i + 2}", f"${training['costs'][i]:.3e}",
               f"${training['costs'][i + 1]:.3e}", f"{e:+.1%}"]
              for i, e in enumerate(training["errors"])],
        ],
    ))  # fmt: skip
    by_kind: dict[str, list[float]] = {}
    for s in serving:
        kind = f"{s['held_out']['load_s']:.0f} s at {s['held_out']['rate']:.0f} req/s"
        by_kind.setdefault(kind, []).append(s["error"])
    for kind, errs in by_kind.items():
        print(f"serving, {kind}: median error {median(errs):+.1%} over {len(errs)} pairs "
              f"({', '.join(f'{e:+.1%}' for e in errs)})")  # fmt: skip
    print(f"training: median |error| {training['median_abs_error']:.1%} over "
          f"{len(training['errors'])} consecutive pairs")  # fmt: skip
    payload = {"machine": machine(), "fits": fits, "flush": flush, "serving": serving,
               "training": training}  # fmt: skip
    print("\n" + markdown_table(["fit", "ratio", "direct"], [[f["fit"], f"{f['ratio']:.4f}",
          f"{f['direct_overhead']:.3%}"] for f in fits]))  # fmt: skip
    print(f"\nwrote {write_json('bench_ledger', payload)}")


if __name__ == "__main__":
    main()
