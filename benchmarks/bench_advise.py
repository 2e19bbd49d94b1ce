"""``tandem advise``: what its sweep costs, and whether its recommendation holds when measured
again.

    PYTHONPATH=src python benchmarks/bench_advise.py [--quick]

1. **The sweep.** ``advise`` on a trained MLP at an objective the default configuration can
   meet, with the default grid of this machine: configurations measured against the grid's
   size (the early stop), plus the finalists' confirmation rounds, and the wall time.
2. **The recommendation, re-measured.** The recommended configuration and the default one
   (``tandem serve``'s defaults) measured again, alternately, ``--rounds`` times each, at the
   same target rate: median $/1M predictions, p99 and CPU cores of each, and their ratio. The
   baseline is what a user gets without advise.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import numpy as np
import orjson

from _common import machine, markdown_table, median, temp_registry, text_table, write_json


def _table(n: int, k: int, seed: int = 0) -> Any:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    y = X[:, 0] + X[:, 1] * X[:, 2] - X[:, 3] ** 2 + rng.normal(scale=0.3, size=n) > 0
    return pa.table({**{f"f{i}": X[:, i] for i in range(k)}, "y": y.astype(np.int64)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer rounds")
    parser.add_argument("--rps", type=float, default=300.0)
    parser.add_argument("--p99-ms", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    window = 0.5 if args.quick else 1.0
    rounds = 2 if args.quick else args.rounds

    import tandem
    from tandem.inference import load
    from tandem.ledger.advise import Config, Sweep, advise, default_grid
    from tandem.ledger.cost import PriceTable
    from tandem.ledger.devices import DeviceTable
    from tandem.ledger.hardware import usable_cores

    with temp_registry() as reg:
        env = dict(os.environ) | {"TANDEM_HOME": str(reg.settings.home)}
        tandem.train(_table(20_000, 32), target="y", name="m", model="mlp",
                     params={"hidden": 256}, registry=reg)  # fmt: skip
        grid = default_grid(usable_cores())
        size = math.prod(len(v) for v in grid.values())
        prices = PriceTable.load()
        started = time.monotonic()
        result = advise(
            reg, "m:1", rps=args.rps, slo_p99_ms=args.p99_ms, grid=grid, window_s=window,
            prices=prices, devices=DeviceTable.load(),
            on_point=lambda p: print(f"  measured {p.config.label}: {p.capacity.goodput:,.0f}/s",
                                     flush=True),
        )  # fmt: skip
        sweep_s = time.monotonic() - started
        best = result.best
        chosen = best.config if best is not None else Config()
        manifest_row = load("m:1", registry=reg).manifest.example_row()
        bench = Sweep("m:1", args.rps, args.p99_ms,
                      orjson.dumps({"dataframe_records": [manifest_row]}), 1, prices,
                      window_s=window, env=env)  # fmt: skip
        again: dict[str, list[Any]] = {"default": [], "recommended": []}
        try:
            for _ in range(rounds):
                for name, config in (("default", Config()), ("recommended", chosen)):
                    again[name].append(bench.measure(config))
        finally:
            bench.close()

    def figures(points: list[Any]) -> dict[str, float]:
        def med(get: Any) -> float:
            values = [v for p in points if (v := get(p)) is not None]
            return median(values) if values else float("nan")

        return {
            "met": sum(p.meets for p in points),
            "per_million": med(lambda p: p.cost_per_million),
            "p99_ms": med(lambda p: p.target.p99_ms if p.target else None),
            "cores": med(lambda p: p.target.cores if p.target else None),
            "capacity": med(lambda p: p.capacity.goodput),
        }

    base, rec = figures(again["default"]), figures(again["recommended"])
    rows = [
        [name, f"{f['met']:.0f} of {rounds}", f"{f['capacity']:,.0f}", f"{f['p99_ms']:.2f}",
         f"{f['cores']:.3f}", f"{f['per_million']:.4f}"]
        for name, f in (("default: " + Config().label, base), ("advised: " + chosen.label, rec))
    ]  # fmt: skip
    ratio = rec["per_million"] / base["per_million"]
    headers = ["configuration", "objective met", "max /s", f"p99 ms at {args.rps:g}/s", "CPU cores",
               f"{prices.currency}/1M"]  # fmt: skip
    again_n = sum(p.rounds - 1 for p in result.points)
    print(f"\n1. the sweep: {len(result.points)} of {size} configurations measured "
          f"(+ {again_n} confirmation runs), {sweep_s:.0f} s; objective p99 <= {args.p99_ms:g} ms "
          f"at {args.rps:g}/s")  # fmt: skip
    print(f"\n2. re-measured, median of {rounds} alternating rounds each")
    print(text_table(headers, rows))
    print(f"advised / default cost per prediction: {ratio:.2f}")
    print("\n" + markdown_table(headers, rows))
    write_json("bench_advise", {
        "machine": machine(), "rps": args.rps, "p99_ms": args.p99_ms, "window_s": window,
        "grid_size": size, "measured": len(result.points), "sweep_s": sweep_s,
        "confirmation_runs": again_n,
        "advice": result.to_json(), "default": base, "recommended": rec,
        "recommended_config": chosen.label, "ratio": ratio,
    })  # fmt: skip


if __name__ == "__main__":
    main()
