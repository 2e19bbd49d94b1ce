"""``tandem demo``: the model's life on real data, measured.

Daily weather (will it rain tomorrow?): train ``auto`` on the older years, register and
promote the winner, then predict the newer years from the registry and put what training
cost beside what inference costs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tandem.data.demo import rainfall
from tandem.inference import load
from tandem.ledger.meter import Meter, Profile
from tandem.registry import Registry
from tandem.training.train import ProgressEvent, TrainResult, train

__all__ = ["DemoResult", "run_demo"]

NAME = "rain"
TRAIN_SHARE = 2 / 3
SINGLE_ROW_CALLS = 500


@dataclass(frozen=True)
class DemoResult:
    training: TrainResult
    inference_rows: int
    inference_accuracy: float
    #: accuracy of always predicting the older years' most frequent class on the later days
    majority_accuracy: float
    bulk: Profile
    single_row_p50_us: float
    single_row_p99_us: float
    single_row_cpu_us: float

    def table(self) -> list[tuple[str, str, str]]:
        """The training-vs-inference rows: (what, training, inference)."""
        t = self.training.profile
        n_train = sum(self.training.rows.values())
        return [
            (
                "purpose",
                f"learn weights from {n_train:,} days",
                f"predict {self.inference_rows:,} later days",
            ),
            (
                "model",
                f"{self.training.family} (auto, {len(self.training.leaderboard)} candidates)",
                f"{self.training.version.ref} via ONNX Runtime",
            ),
            (
                "wall time",
                f"{t.wall_seconds:.2f} s",
                f"{self.bulk.wall_seconds * 1e3:.1f} ms for all rows",
            ),
            (
                "CPU seconds",
                f"{t.cpu_seconds:.2f} s",
                f"{self.bulk.cpu_seconds:.3f} s for all rows",
            ),
            (
                "per row",
                f"{t.cpu_seconds / n_train * 1e6:,.0f} µs CPU per training row",
                f"{self.bulk.cpu_seconds / self.inference_rows * 1e6:.2f} µs CPU (bulk)",
            ),
            (
                "latency",
                "-",
                f"single row p50 {self.single_row_p50_us:.0f} µs, p99 {self.single_row_p99_us:.0f} µs",
            ),
            ("peak memory", f"{t.peak_rss_mb:.0f} MB (process)", "same process"),
            (
                "quality",
                f"test accuracy {self.training.version.metrics.get('accuracy', float('nan')):.3f}",
                f"accuracy on later days {self.inference_accuracy:.3f} "
                f"(always the old majority class: {self.majority_accuracy:.3f})",
            ),
            ("how often", "once per (re)training", "every prediction"),
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.training.version.ref,
            "family": self.training.family,
            "leaderboard": [c.to_json() for c in self.training.leaderboard],
            "training": {**self.training.profile.to_json(), "rows": self.training.rows},
            "inference": {
                "rows": self.inference_rows,
                "accuracy": self.inference_accuracy,
                "majority_class_accuracy": self.majority_accuracy,
                "bulk": self.bulk.to_json(),
                "single_row_p50_us": self.single_row_p50_us,
                "single_row_p99_us": self.single_row_p99_us,
                "single_row_cpu_us": self.single_row_cpu_us,
            },
        }


def run_demo(
    *,
    registry: Registry | None = None,
    time_budget: float = 30.0,
    on_progress: Callable[[ProgressEvent], None] | None = None,
) -> DemoResult:
    """Train on the older two thirds of the weather data, predict the newer third."""
    table = rainfall()
    cut = int(table.num_rows * TRAIN_SHARE)
    older, newer = table.slice(0, cut), table.slice(cut)
    own = registry is None
    reg = registry or Registry()
    try:
        result = train(
            older,
            target="rain",
            name=NAME,
            ignore=["day"],
            time_budget=time_budget,
            on_progress=on_progress,
            registry=reg,
        )
        reg.set_alias(NAME, result.version.version, "champion")
        predictor = load(f"{NAME}@champion", registry=reg)
    finally:
        if own:
            reg.close()
    features = newer.drop_columns(["rain"])
    with Meter() as bulk_meter:
        out = predictor.predict(features)
    truth = np.asarray(newer.column("rain").to_numpy())
    accuracy = float(np.mean(out.column("label").to_numpy() == truth))
    # the later decades rain more often: a model can fall below this baseline as the data
    # drifts, which is what monitoring (next) is for
    old = np.asarray(older.column("rain").to_numpy())
    values, counts = np.unique(old, return_counts=True)
    majority = float(np.mean(truth == values[np.argmax(counts)]))
    rows = features.slice(0, SINGLE_ROW_CALLS).to_pylist()
    latencies = []
    with Meter() as single_meter:
        for row in rows:
            start = time.perf_counter()
            predictor.predict(row)
            latencies.append((time.perf_counter() - start) * 1e6)
    return DemoResult(
        training=result,
        inference_rows=newer.num_rows,
        inference_accuracy=accuracy,
        majority_accuracy=majority,
        bulk=bulk_meter.profile,
        single_row_p50_us=statistics.median(latencies),
        single_row_p99_us=float(np.percentile(latencies, 99)),
        single_row_cpu_us=single_meter.profile.cpu_seconds / len(rows) * 1e6,
    )
