"""Predictor throughput against a bare ONNX Runtime session and the native frameworks.

Claim under test (issue goal): the Predictor's per-call overhead at batch 1 is at most 20% over
a bare ``onnxruntime.InferenceSession.run`` on the same graph, and at batch 4096 it reaches at
least 90% of the bare session's rows/s.

What runs, for a gradient-boosted-trees model and an MLP trained by tandem on the same
synthetic data, at each batch size, taking turns in the same rounds:

  tandem       ``Predictor.predict_columns({column: float64 array})``: all five steps
  bare ORT     ``session.run([output], feed)`` on a feed built once, outside the timing, in
               the graph's input layout, with the session options the Predictor uses
               (threads pinned identically)
  native       LightGBM ``booster.predict(X)`` / torch eager ``module(X)`` under no_grad, on the
               already-preprocessed feature matrix (no preprocessing cost)
  native+prep  tandem's numpy preprocessing (coerce + impute/scale) followed by ``native``: the
               in-memory pipeline, raw columns in
  row API      ``Predictor.predict(list of dicts)`` at batch 1 and 64

Each cell reports the median over rounds of the mean time per call. tandem and bare ORT take
turns within the same rounds and their ratio is the median of per-round paired ratios; the two
native paths take turns in rounds of their own (so ORT's and the frameworks' thread pools do not
fight over the cores) and their ratios are ratios of medians. Run from the repository root:

    PYTHONPATH=src TANDEM_HOME=$(mktemp -d) python benchmarks/bench_predict.py [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Timer,
    interleaved,
    median,
    paired_ratio,
    rate,
    save_results,
    synthetic_classification,
    temp_registry,
    text_table,
)

SCRIPT = "bench_predict"
OVERHEAD_GOAL = 0.20  # batch 1: tandem time per call <= 1.20 x bare
SHARE_GOAL = 0.90  # batch 4096: tandem rows/s >= 0.90 x bare
BATCHES = (1, 8, 64, 512, 4096)
ROW_API_BATCHES = (1, 64)
N_FEATURES = 32


def make_data(n_rows: int, seed: int = 0) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """A training table (32 float features + binary target ``y``) and 4096 fresh rows to score.

    The target mixes linear, interaction and non-linear terms so both trees and an MLP have
    something to learn.
    """
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_classification(rng, n, N_FEATURES)

    x, y = draw(n_rows)
    names = [f"f{j:02d}" for j in range(N_FEATURES)]
    table = pa.table({**{n: x[:, j] for j, n in enumerate(names)}, "y": y})
    x_eval, _ = draw(max(BATCHES))
    columns = {n: np.ascontiguousarray(x_eval[:, j]) for j, n in enumerate(names)}
    return table, columns


def bare_session(graph: bytes, threads: int) -> ort.InferenceSession:
    """A session built straight from onnxruntime, with the options tandem's runtime sets."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def session_settings(session: ort.InferenceSession) -> dict[str, Any]:
    opts = session.get_session_options()
    return {
        "intra_op_num_threads": opts.intra_op_num_threads,
        "inter_op_num_threads": opts.inter_op_num_threads,
        "graph_optimization_level": str(opts.graph_optimization_level),
        "execution_mode": str(opts.execution_mode),
        "providers": session.get_providers(),
    }


class Model:
    """One trained model and the callables that score a batch through each path."""

    def __init__(self, kind: str, result: Any, registry: Any, threads: int) -> None:
        import tandem
        from tandem.data.schema import coerce_column

        self.kind = kind
        self.threads = threads
        self.predictor = tandem.load(result.version.ref, registry=registry, threads=threads)
        self.session = bare_session(self.predictor.bundle.graph, threads)
        self.output = self.predictor.manifest.output
        self.names = [c.name for c in self.predictor.manifest.inputs]
        self.pipeline = result.pipeline
        self.family = result.pipeline.family
        self._coerce = coerce_column  # bound once: features() runs inside timed calls

    def feed(self, columns: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """The first ``n`` rows in the graph's input layout, built once, outside any timing.

        The layout (one (n, 1) input per column, or packed matrices) belongs to the Bundle
        format, so the Predictor's own encode step builds it; the arrays are then copied, so
        the bare session runs on plain contiguous arrays that share nothing with tandem.
        """
        encoded = self.predictor.encode({name: columns[name][:n] for name in self.names})
        feed = {k: np.array(v, copy=True, order="C") for k, v in encoded.items()}
        expected = {i.name for i in self.session.get_inputs()}
        if set(feed) != expected:
            raise RuntimeError(
                f"feed {sorted(feed)} does not match graph inputs {sorted(expected)}"
            )
        return feed

    def graph_inputs(self) -> list[dict[str, Any]]:
        return [
            {"name": i.name, "type": i.type, "shape": [str(d) for d in i.shape]}
            for i in self.session.get_inputs()
        ]

    def features(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        pre = self.pipeline.preprocessor
        return pre.transform({c.name: self._coerce(c, columns[c.name]) for c in pre.columns})

    def native(self, x: np.ndarray) -> Any:
        """The framework's own predict on a preprocessed matrix (tensor for torch)."""
        if self.kind == "gbdt":
            booster, best = self.family.booster_, self.family.best_iteration_
            return lambda: booster.predict(x, num_iteration=best, num_threads=self.threads)
        import torch

        module = self.family.scored_
        tensor = torch.from_numpy(np.ascontiguousarray(x))

        def run() -> Any:
            with torch.no_grad():
                return module(tensor)

        return run

    def native_with_prep(self, columns: dict[str, np.ndarray]) -> Any:
        """tandem's numpy preprocessing, then the framework, both inside the timing."""
        return lambda: self.native(self.features(columns))()


def parity(model: Model, columns: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest absolute difference in P(class 1) between the paths on the 4096 rows."""
    tandem_p = model.predictor.predict_columns(columns)["proba_1"]
    bare_p = model.session.run([model.output], model.feed(columns, len(tandem_p)))[0][:, 1]
    raw = model.native(model.features(columns))()
    native_p = np.asarray(raw, dtype=np.float64)
    native_p = native_p if native_p.ndim == 1 else native_p[:, 1]
    return {
        "tandem_vs_bare": float(np.max(np.abs(tandem_p - bare_p))),
        "tandem_vs_native": float(np.max(np.abs(tandem_p - native_p))),
    }


def bench_batches(
    model: Model,
    columns: dict[str, np.ndarray],
    batches: tuple[int, ...],
    rounds: int,
    round_s: float,
) -> list[dict[str, Any]]:
    rows = []
    for n in batches:
        cols = {k: v[:n] for k, v in columns.items()}
        feed = model.feed(columns, n)
        x = model.features(cols)
        predictor, session, outputs = model.predictor, model.session, [model.output]
        # ONNX Runtime paths take turns with each other, the framework paths with each other:
        # ORT's spinning thread pool and the frameworks' OpenMP pools would otherwise compete for
        # the cores whenever more than one thread is used
        # the same rows as one (n, k) matrix in signature order: Predictor.predict(matrix)
        matrix = np.column_stack([cols[name] for name in predictor.input_names])
        timers = {
            "tandem": Timer(lambda p=predictor, c=cols: p.predict_columns(c)),
            "matrix": Timer(lambda p=predictor, m=matrix: p.predict(m)),
            "bare": Timer(lambda s=session, f=feed, o=outputs: s.run(o, f)),
        }
        native = {
            "native": Timer(model.native(x)),
            "native_prep": Timer(model.native_with_prep(cols)),
        }
        samples = interleaved(timers, rounds=rounds, round_s=round_s)
        samples.update(interleaved(native, rounds=rounds, round_s=round_s))
        timers.update(native)
        sec = {k: median(v) for k, v in samples.items()}
        rows.append(
            {
                "model": model.kind,
                "threads": model.threads,
                "batch": n,
                "seconds_per_call": sec,
                "rows_per_s": {k: n / v for k, v in sec.items()},
                "tandem_over_bare": paired_ratio(samples["tandem"], samples["bare"]),
                "matrix_over_bare": paired_ratio(samples["matrix"], samples["bare"]),
                # not paired: measured in separate rounds
                "tandem_over_native": sec["tandem"] / sec["native"],
                "tandem_over_native_prep": sec["tandem"] / sec["native_prep"],
                "calls_per_round": {k: t.calls for k, t in timers.items()},
                "samples": samples,
            }
        )
    return rows


def bench_row_api(
    model: Model, columns: dict[str, np.ndarray], rounds: int, round_s: float
) -> list[dict[str, Any]]:
    rows = []
    for n in ROW_API_BATCHES:
        records = [{k: float(v[i]) for k, v in columns.items()} for i in range(n)]
        feed = model.feed(columns, n)
        predictor, session, outputs = model.predictor, model.session, [model.output]
        timers = {
            "row_api": Timer(lambda p=predictor, r=records: p.predict(r)),
            "bare": Timer(lambda s=session, f=feed, o=outputs: s.run(o, f)),
        }
        samples = interleaved(timers, rounds=rounds, round_s=round_s)
        sec = {k: median(v) for k, v in samples.items()}
        rows.append(
            {
                "model": model.kind,
                "threads": model.threads,
                "batch": n,
                "seconds_per_call": sec,
                "rows_per_s": {k: n / v for k, v in sec.items()},
                "row_api_over_bare": paired_ratio(samples["row_api"], samples["bare"]),
            }
        )
    return rows


def step_breakdown(
    model: Model, columns: dict[str, np.ndarray], rounds: int, round_s: float
) -> dict[str, float]:
    """Seconds per call of each Predictor step at batch 1, next to the bare session run."""
    p = model.predictor
    cols = {k: v[:1] for k, v in columns.items()}
    raw = p.preprocess(cols)
    feed = p.encode(raw)
    out = p.forward(feed)
    prebuilt = model.feed(columns, 1)
    outputs = [model.output]
    timers = {
        "preprocess": Timer(lambda: p.preprocess(cols)),
        "encode": Timer(lambda: p.encode(raw)),
        "forward": Timer(lambda: p.forward(feed)),
        "decode": Timer(lambda: p.decode(out)),
        "bare_run": Timer(lambda: model.session.run(outputs, prebuilt)),
        "predict_columns": Timer(lambda: p.predict_columns(cols)),
    }
    samples = interleaved(timers, rounds=rounds, round_s=round_s)
    return {k: median(v) for k, v in samples.items()}


def profile_batch1(model: Model, columns: dict[str, np.ndarray], calls: int, top: int) -> str:
    """cProfile of ``predict_columns`` at batch 1, sorted by own time."""
    cols = {k: v[:1] for k, v in columns.items()}
    p = model.predictor
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        p.predict_columns(cols)
    profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    return buffer.getvalue()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated thread counts, each pinned alike in ORT, LightGBM and torch "
        "(default 1: on a small shared machine more threads measure the scheduler, not tandem)",
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="training rows (default 20000; quick: 4000)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="timing rounds per cell (default 9; quick: 3)"
    )
    parser.add_argument(
        "--round-s",
        type=float,
        default=None,
        help="seconds per round and path (default 0.1; quick: 0.02)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="training seconds per model (default 15; quick: 3)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the cProfile of predict_columns at batch 1"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick
    threads = [int(t) for t in (args.threads or "1").split(",")]
    n_rows = args.rows or (4000 if quick else 20000)
    rounds = args.rounds or (3 if quick else 9)
    round_s = args.round_s or (0.02 if quick else 0.1)
    budget = args.time_budget or (3.0 if quick else 15.0)
    started = time.perf_counter()

    import torch

    import tandem

    table, columns = make_data(n_rows)
    results: dict[str, Any] = {
        "script": SCRIPT,
        "quick": quick,
        "settings": {
            "rows": n_rows,
            "features": N_FEATURES,
            "batches": list(BATCHES),
            "rounds": rounds,
            "round_s": round_s,
            "time_budget": budget,
            "threads": threads,
        },
        "goals": {"overhead_batch1_max": OVERHEAD_GOAL, "share_batch4096_min": SHARE_GOAL},
        "models": {},
        "batches": [],
        "row_api": [],
        "steps_batch1": [],
        "verdicts": [],
    }

    with temp_registry() as registry:
        trained = {}
        for kind in ("gbdt", "mlp"):
            t0 = time.perf_counter()
            result = tandem.train(
                table,
                target="y",
                name=f"bench-{kind}",
                model=kind,
                time_budget=budget,
                seed=0,
                registry=registry,
            )
            trained[kind] = result
            results["models"][kind] = {
                "ref": result.version.ref,
                "train_seconds": time.perf_counter() - t0,
                "test_accuracy": result.version.metrics.get("accuracy"),
                "describe": {
                    k: v for k, v in result.pipeline.family.describe().items() if k != "history"
                },
                "graph_bytes": None,
            }
            print(
                f"trained {kind}: {result.version.ref} in {time.perf_counter() - t0:.1f}s, "
                f"test accuracy {result.version.metrics.get('accuracy'):.4f}",
                flush=True,
            )

        profiles = {}
        for t in threads:
            torch.set_num_threads(t)
            for kind, result in trained.items():
                model = Model(kind, result, registry, t)
                results["models"][kind]["graph_bytes"] = len(model.predictor.bundle.graph)
                results["models"][kind]["graph_inputs"] = model.graph_inputs()
                tandem_opts = session_settings(model.predictor._session)
                bare_opts = session_settings(model.session)
                if tandem_opts != bare_opts:
                    print(
                        f"WARNING: session options differ: tandem {tandem_opts} vs bare {bare_opts}"
                    )
                results["models"][kind].setdefault("session_options", {})[str(t)] = {
                    "tandem": tandem_opts,
                    "bare": bare_opts,
                }
                results["models"][kind].setdefault("parity", {})[str(t)] = parity(model, columns)
                print(f"timing {kind} at {t} thread(s) ...", flush=True)
                results["batches"] += bench_batches(model, columns, BATCHES, rounds, round_s)
                results["row_api"] += bench_row_api(model, columns, rounds, round_s)
                steps = step_breakdown(model, columns, rounds, round_s)
                results["steps_batch1"].append({"model": kind, "threads": t, "seconds": steps})
                if not args.no_profile and t == threads[0]:
                    profiles[kind] = profile_batch1(model, columns, 2000 if quick else 20000, 18)
        results["torch_threads"] = torch.get_num_threads()

    report(results, profiles)
    results["profiles_batch1"] = profiles
    save_results(SCRIPT, results, started)
    return 0


def print_columns(records: list[dict[str, Any]], columns: list[tuple[str, Any]]) -> None:
    """One text table: a row per record, a (header, cell function) per column."""
    print(text_table([h for h, _ in columns], [[cell(r) for _, cell in columns] for r in records]))


def report(results: dict[str, Any], profiles: dict[str, str]) -> None:
    us = 1e6
    print(
        "\nPredictor throughput, rows/s "
        "(median of rounds; t/bare = median of paired per-round ratios)"
    )
    print(
        "tandem = predict_columns(dict of columns); matrix = predict((n, k) array); "
        "native = framework on already-preprocessed features; "
        "native+prep = tandem's numpy preprocessing + framework\n"
    )
    per_s = lambda path: lambda r: rate(r["rows_per_s"][path])  # noqa: E731
    per_call = lambda path, key="seconds_per_call": lambda r: f"{r[key][path] * us:.1f}"  # noqa: E731
    ratio = lambda key: lambda r: f"{r[key]:.2f}"  # noqa: E731
    first = [("model", lambda r: r["model"]), ("thr", lambda r: r["threads"])]
    batch = [*first, ("batch", lambda r: r["batch"])]
    print_columns(results["batches"], [
        *batch, ("tandem", per_s("tandem")), ("matrix", per_s("matrix")),
        ("bare ORT", per_s("bare")), ("native", per_s("native")),
        ("native+prep", per_s("native_prep")), ("t/bare", ratio("tandem_over_bare")),
        ("m/bare", ratio("matrix_over_bare")), ("t/native", ratio("tandem_over_native")),
        ("tandem µs", per_call("tandem")), ("bare µs", per_call("bare")),
        ("overhead µs", lambda r: f"{(r['seconds_per_call']['tandem'] - r['seconds_per_call']['bare']) * us:+.1f}"),
    ])  # fmt: skip

    print("\nRow API: Predictor.predict(list of dicts) vs the bare session on a pre-built feed\n")
    print_columns(results["row_api"], [
        *batch, ("row API", per_s("row_api")), ("bare ORT", per_s("bare")),
        ("row/bare", ratio("row_api_over_bare")), ("row µs", per_call("row_api")),
        ("bare µs", per_call("bare")),
    ])  # fmt: skip

    print("\nPredictor steps at batch 1, µs per call (each step timed alone on its own input)\n")
    steps = ("preprocess", "encode", "forward", "decode", "predict_columns", "bare_run")
    shown = ("preprocess", "encode", "forward", "decode", "all", "bare run")
    print_columns(
        results["steps_batch1"],
        [*first, *((h, per_call(k, "seconds")) for h, k in zip(shown, steps, strict=True))],
    )

    print("\nGoals: overhead at batch 1 ≤ 20% over bare ORT; rows/s at 4096 ≥ 90% of bare ORT\n")
    rows = []
    by_key = {(r["model"], r["threads"], r["batch"]): r for r in results["batches"]}
    for model, t in sorted({(r["model"], r["threads"]) for r in results["batches"]}):
        one, big = by_key[(model, t, 1)], by_key[(model, t, max(BATCHES))]
        for path, ratio_key in (("columns", "tandem_over_bare"), ("matrix", "matrix_over_bare")):
            timed = "tandem" if path == "columns" else "matrix"
            overhead = one[ratio_key] - 1.0
            overhead_us = (one["seconds_per_call"][timed] - one["seconds_per_call"]["bare"]) * us
            share = 1.0 / big[ratio_key]
            ok1, ok2 = overhead <= OVERHEAD_GOAL, share >= SHARE_GOAL
            results["verdicts"].append(
                {
                    "model": model,
                    "threads": t,
                    "input": path,
                    "overhead_batch1": overhead,
                    "overhead_batch1_us": overhead_us,
                    "share_batch4096": share,
                    "overhead_pass": ok1,
                    "share_pass": ok2,
                }
            )
            rows.append(
                [
                    model,
                    t,
                    path,
                    f"{overhead_us:+.1f} µs",
                    f"{overhead:+.0%}",
                    "PASS" if ok1 else "MISS",
                    f"{share:.0%}",
                    "PASS" if ok2 else "MISS",
                ]
            )
    print(
        text_table(
            [
                "model",
                "thr",
                "input",
                "overhead b=1",
                "overhead %",
                "goal ≤20%",
                "share b=4096",
                "goal ≥90%",
            ],
            rows,
        )
    )

    for kind, info in results["models"].items():
        print(
            f"\n{kind}: {info['describe']}, graph {info['graph_bytes']} bytes, "
            f"parity {info['parity']}"
        )
        inputs = info["graph_inputs"]
        layout = "; ".join(f"{i['name']} {i['type']} {i['shape']}" for i in inputs[:3])
        more = f"; … ({len(inputs)} inputs)" if len(inputs) > 3 else ""
        print(f"  graph inputs: {layout}{more}")
        for t, opts in info["session_options"].items():
            ort_opts = opts["tandem"]
            print(
                f"  threads={t}: ORT intra={ort_opts['intra_op_num_threads']} "
                f"inter={ort_opts['inter_op_num_threads']} "
                f"(bare session identical: {ort_opts == opts['bare']}); "
                f"LightGBM num_threads={t}; torch.set_num_threads({t})"
            )
    for kind, text in profiles.items():
        print(f"\ncProfile of predict_columns at batch 1 ({kind}), top by own time:\n")
        print("\n".join(line for line in text.splitlines() if line.strip())[:4000])


if __name__ == "__main__":
    raise SystemExit(main())
