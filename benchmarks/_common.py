"""Helpers shared by the benchmark scripts: timing, temp registries, tables, JSON output.

Not part of the package: the scripts import it as a sibling module, so run them as
``python benchmarks/bench_X.py`` from the repository root with ``PYTHONPATH=src``.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"


@contextmanager
def temp_registry() -> Iterator[Any]:
    """A tandem Registry whose database and artifacts live in a throw-away folder."""
    import tandem

    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp:
        registry = tandem.Registry(tandem.Settings(home=Path(tmp)))
        try:
            yield registry
        finally:
            registry.close()


def machine() -> dict[str, Any]:
    """What the numbers were measured on, for the JSON record."""
    import numpy
    import onnxruntime

    info: dict[str, Any] = {
        "tandem_source_sha256": source_digest(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    for module in ("lightgbm", "torch", "sklearn", "river"):
        mod = sys.modules.get(module)
        if mod is not None:
            info[module] = getattr(mod, "__version__", "?")
    return info


def source_digest() -> str:
    """SHA-256 over tandem's source files, so a figure can be tied to the code it measured
    (the working tree may be ahead of the last commit)."""
    import hashlib

    import tandem

    root = Path(tandem.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def write_json(script: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``benchmarks/out/<script>.json`` and return the path."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{script}.json"
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def save_results(script: str, results: dict[str, Any], started: float) -> None:
    """Add the run's total seconds and the machine to ``results``, write them (see
    :func:`write_json`) and say where."""
    results["seconds_total"] = time.perf_counter() - started
    results["machine"] = machine()
    path = write_json(script, results)
    print(f"\ntotal {results['seconds_total']:.0f}s; results in {path}")


def load_test_unavailable() -> bool:
    """True, after saying why, when a wrk load test cannot run here (it needs wrk, taskset and
    two cores: one for the servers, one for the load)."""
    import shutil

    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"{missing[0]} not found on PATH (apt-get install wrk util-linux)")
    elif len(os.sched_getaffinity(0)) < 2:
        print("needs 2 cores: one for the servers, one for wrk")
    else:
        return False
    return True


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


# -- timing ------------------------------------------------------------------------------------


@dataclass
class Timer:
    """Time-bounded repeated calls of one function.

    ``calls`` is chosen once (calibration) so that one round of ``calls`` calls lasts about
    ``round_s`` seconds; each round records the mean seconds per call.
    """

    fn: Callable[[], Any]
    calls: int = 1

    def calibrate(self, round_s: float) -> None:
        self.fn()  # warm-up: first-call allocations, lazy initialisation
        n, elapsed = 1, 0.0
        while True:
            elapsed = self._run(n)
            if elapsed >= round_s / 4 or n >= 1 << 22:
                break
            n *= 4
        self.calls = max(1, round(n * round_s / max(elapsed, 1e-9)))

    def _run(self, n: int) -> float:
        fn = self.fn
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - started

    def round(self) -> float:
        """Seconds per call, averaged over one round."""
        return self._run(self.calls) / self.calls


def interleaved(timers: dict[str, Timer], *, rounds: int, round_s: float) -> dict[str, list[float]]:
    """Per-round mean seconds per call for each timer.

    The timers take turns within each round (in a rotating order), so a noisy neighbour on the
    machine slows all of them alike and paired ratios stay meaningful. The garbage collector
    is off while timing, as in :mod:`timeit`.
    """
    for t in timers.values():
        t.calibrate(round_s)
    names = list(timers)
    samples: dict[str, list[float]] = {n: [] for n in names}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                samples[name].append(timers[name].round())
    finally:
        if enabled:
            gc.enable()
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a[i] / b[i]."""
    return median([x / y for x, y in zip(a, b, strict=True)])


# -- tables ------------------------------------------------------------------------------------


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned cells (the first column left-aligned)."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table, numbers right-aligned."""
    align = ["---", *("---:" for _ in headers[1:])]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rate(value: float) -> str:
    """Rows per second, compactly: 1.23M, 45.6k, 789."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def synthetic_classification(rng: Any, n: int, n_features: int) -> tuple[Any, Any]:
    """(x, y): standard-normal features and a binary target mixing linear, interaction and
    non-linear terms, so that both trees and an MLP have something to learn."""
    import numpy as np

    x = rng.standard_normal((n, n_features))
    logit = (
        x[:, 0] * x[:, 1]
        + np.sin(2.0 * x[:, 2])
        + 0.5 * x[:, 3:8].sum(axis=1)
        - 0.7 * x[:, 8] ** 2
        + 0.7
    )
    y = (logit + 0.5 * rng.standard_normal(n) > 0).astype(np.int64)
    return x, y


def train_models(registry: Any, table: Any, budget: float) -> dict[str, Any]:
    """W1 (tandem's MLP 32→256→ReLU→256→ReLU→2) and a 200-tree LightGBM model, registered as
    ``w1`` and ``gbdt`` from ``table`` (target ``y``)."""
    import tandem

    specs = {
        "w1": ("mlp", {"hidden": 256}),
        "gbdt": ("gbdt", {"max_rounds": 200, "patience": 200}),
    }
    info: dict[str, Any] = {}
    for name, (family, params) in specs.items():
        t0 = time.perf_counter()
        result = tandem.train(
            table,
            target="y",
            name=name,
            model=family,
            params=params,
            registry=registry,
            time_budget=budget,
            seed=0,
        )
        predictor = tandem.load(name, registry=registry, threads=1)
        details = predictor.manifest.details.get("model", {})
        info[name] = {
            "ref": result.version.ref,
            "family": family,
            "params": params,
            "train_seconds": time.perf_counter() - t0,
            "test_accuracy": result.version.metrics.get("accuracy"),
            "model": {k: v for k, v in details.items() if k != "history"},
            "graph_bytes": len(predictor.bundle.graph),
        }
        kept = details.get("trees", details.get("hidden"))
        what = "trees kept" if family == "gbdt" else "hidden"
        print(
            f"trained {name} ({family}): {result.version.ref} in {info[name]['train_seconds']:.1f}s, "
            f"test accuracy {info[name]['test_accuracy']:.4f}, {what}: {kept}",
            flush=True,
        )
    return info
