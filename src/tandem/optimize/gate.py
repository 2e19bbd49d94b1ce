"""The gate every optimized candidate passes: measured here, against the model it came from.

Both graphs run in this process, one intra-op thread each, on the same holdout rows, in
alternating rounds (so a busy moment of a shared machine hits both): latency of single-row
calls (p50 over the round's calls, median over rounds) and throughput of 256-row calls
(rows per second, median over rounds), plus the model's metrics on the whole holdout, run in
256-row calls as a server would batch them. The candidate passes when it is faster on both
counts (the median over rounds of its per-round ratio to the original is under 1) and loses at
most ``max_loss`` points (hundredths) of the task's primary metric (accuracy, or R²).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np

from tandem.inference.runtime import make_session

__all__ = ["BATCH", "GateReport", "Measured", "measure_pair"]

#: the batch size of the throughput measurement and of the metric's calls
BATCH = 256
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Measured:
    """One graph's figures: file size, p50 latency at batch 1, rows/s at batch 256, metrics."""

    size_bytes: int
    p50_ms: float
    rows_per_s: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class GateReport:
    """Before / after, the verdict and its reasons (empty when the candidate passed)."""

    technique: str
    metric: str
    max_loss: float
    before: Measured
    after: Measured
    #: median over rounds of after / before: p50 latency and rows/s
    latency_ratio: float
    throughput_ratio: float
    #: rows whose predicted class differs between a 1-row call and a 256-row call (dynamic
    #: quantization's batch dependence); None for regression
    batch_dependent_rows: int | None = None
    cpu: dict[str, bool] = field(default_factory=dict)
    #: rows in each throughput call
    batch_rows: int = BATCH

    @property
    def reasons(self) -> list[str]:
        """Why the candidate is refused (empty: it passed)."""
        out = []
        if self.latency_ratio >= 1:
            out.append(f"not faster at batch 1: p50 ×{self.latency_ratio:.2f} of the original")
        if self.throughput_ratio <= 1:
            out.append(f"not faster at batch {self.batch_rows}: throughput "
                       f"×{self.throughput_ratio:.2f} of the original")  # fmt: skip
        if self.loss_points > self.max_loss:
            out.append(f"loses {self.loss_points:.2f} points of {self.metric} "
                       f"(at most {self.max_loss:g} allowed)")  # fmt: skip
        return out

    @property
    def accepted(self) -> bool:
        return not self.reasons

    @property
    def loss_points(self) -> float:
        return 100 * (self.before.metrics[self.metric] - self.after.metrics[self.metric])

    def rows(self) -> list[tuple[str, str, str, str]]:
        """The table: (figure, before, after, change)."""
        b, a = self.before, self.after
        out = [
            ("size", f"{b.size_bytes / 1024:,.0f} KiB", f"{a.size_bytes / 1024:,.0f} KiB",
             f"×{a.size_bytes / b.size_bytes:.2f}"),
            ("p50 latency, batch 1", f"{b.p50_ms:.3f} ms", f"{a.p50_ms:.3f} ms",
             f"×{self.latency_ratio:.2f}"),
            (f"throughput, batch {self.batch_rows}", f"{_rate(b.rows_per_s)} rows/s",
             f"{_rate(a.rows_per_s)} rows/s", f"×{self.throughput_ratio:.2f}"),
        ]  # fmt: skip
        for name in b.metrics:
            sign = "" if name != self.metric else f" ({-self.loss_points:+.2f} pt)"
            out.append((name, f"{b.metrics[name]:.4f}", f"{a.metrics[name]:.4f}",
                        f"{a.metrics[name] - b.metrics[name]:+.4f}{sign}"))  # fmt: skip
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": self.reasons, "accepted": self.accepted,
                "loss_points": self.loss_points}  # fmt: skip


def _rate(rows_per_s: float) -> str:
    # a large model's few rows a second keep a decimal
    return f"{rows_per_s:,.0f}" if rows_per_s >= 100 else f"{rows_per_s:.1f}"


def _timed(run: Callable[[], object], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def measure_pair(
    before: bytes,
    after: bytes,
    *,
    single: list[Feed],
    batch: Feed,
    evaluate: Callable[[Callable[[Feed], np.ndarray]], dict[str, float]],
    output: str,
    rounds: int = 7,
    round_s: float = 0.25,
    batch_rows: int = BATCH,
) -> tuple[Measured, Measured, float, float, Callable[[Feed], np.ndarray]]:
    """Time and score two graphs side by side.

    Args:
        single: one-row feeds (the latency calls cycle through them).
        batch: a feed of ``batch_rows`` rows (:data:`BATCH` in the gate).
        evaluate: the metrics of a ``predict(feed) -> outputs`` function on the holdout.
        output: the graph output to fetch.
        rounds: alternating rounds; each spends about ``round_s`` seconds per graph and measure.

    Returns:
        before, after, the latency ratio, the throughput ratio (medians over rounds of after /
        before), and the candidate's predict function.
    """
    sessions = [make_session(g, threads=1) for g in (before, after)]

    def runner(session: Any) -> Callable[[Feed], np.ndarray]:
        def run(feed: Feed) -> np.ndarray:
            result: np.ndarray = session.run([output], feed)[0]
            return result

        return run

    runs = [runner(s) for s in sessions]
    for run in runs:  # warm up: first calls allocate
        run(batch)
        run(single[0])
    one_call = max(1e-6, min(_timed(lambda: runs[0](single[0]), 20)))
    batch_call = max(1e-6, min(_timed(lambda: runs[0](batch), 3)))
    n_single = max(20, int(round_s / one_call))
    n_batch = max(3, int(round_s / batch_call))
    p50s: list[list[float]] = [[], []]
    rates: list[list[float]] = [[], []]
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            run, feeds = runs[i], itertools.cycle(single)
            times = _timed(lambda run=run, feeds=feeds: run(next(feeds)), n_single)  # type: ignore[misc]
            p50s[i].append(statistics.median(times) * 1e3)
            spent = math.fsum(_timed(partial(run, batch), n_batch))
            rates[i].append(batch_rows * n_batch / spent)
    latency = statistics.median(a / b for a, b in zip(p50s[1], p50s[0], strict=True))
    throughput = statistics.median(a / b for a, b in zip(rates[1], rates[0], strict=True))
    measured = [
        Measured(len(g), statistics.median(p50s[i]), statistics.median(rates[i]), evaluate(runs[i]))
        for i, g in enumerate((before, after))
    ]
    return measured[0], measured[1], latency, throughput, runs[1]
