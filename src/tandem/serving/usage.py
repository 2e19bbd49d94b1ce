"""What a server did, for the cost ledger: per model version and interval, the requests and
rows answered, the latency histogram, and the process's CPU time, memory and energy.

Every ``interval_s`` one ``serve`` record per served model goes into the registry (never one per
request): the figures come from the server's own Prometheus series, read as deltas, so the
request path pays nothing for them. The process's CPU time and energy are split among the
models by their share of compute time (batch seconds); a record of kind ``startup`` holds what
loading and warming cost before the first request. When a followed alias moves, the interval
is closed (kind ``swap``) before the new version takes over, so the old version's work is
recorded against it. A record that cannot be written is carried into the next interval, not
lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tandem.ledger.meter import Meter, Profile
from tandem.ledger.records import run_record
from tandem.registry import Registry
from tandem.serving.metrics import LATENCY_BUCKETS, ServerMetrics
from tandem.serving.models import ServedModel

__all__ = ["UsageReading", "UsageRecorder"]

log = logging.getLogger("tandem.serving")


@dataclass
class _Totals:
    """One model's counters so far (Prometheus counters only grow)."""

    codes: dict[str, float] = field(default_factory=dict)
    rows: float = 0.0
    compute_s: float = 0.0
    #: cumulative request counts at each of LATENCY_BUCKETS and +Inf
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(LATENCY_BUCKETS) + 1))
    latency_s: float = 0.0

    def minus(self, old: _Totals) -> _Totals:
        return _Totals(
            {k: v - old.codes.get(k, 0.0) for k, v in self.codes.items() if v - old.codes.get(k, 0.0)},
            self.rows - old.rows, self.compute_s - old.compute_s,
            [a - b for a, b in zip(self.buckets, old.buckets, strict=True)],
            self.latency_s - old.latency_s,
        )  # fmt: skip


def _snapshot(metrics: ServerMetrics) -> dict[str, _Totals]:
    totals: dict[str, _Totals] = {}

    def of(labels: dict[str, str]) -> _Totals:
        return totals.setdefault(labels["model"], _Totals())

    for metric in (metrics.requests, metrics.rows, metrics.batch_seconds, metrics.latency):
        for family in metric.collect():
            for s in family.samples:
                if s.name == "tandem_requests_total":  # summed over protocols
                    codes = of(s.labels).codes
                    codes[s.labels["code"]] = codes.get(s.labels["code"], 0.0) + s.value
                elif s.name == "tandem_rows_total":
                    of(s.labels).rows = s.value
                elif s.name == "tandem_batch_seconds_sum":
                    of(s.labels).compute_s = s.value
                elif s.name == "tandem_request_seconds_sum":
                    of(s.labels).latency_s = s.value
                elif s.name == "tandem_request_seconds_bucket":
                    le = s.labels["le"]
                    i = len(LATENCY_BUCKETS) if le == "+Inf" else LATENCY_BUCKETS.index(float(le))
                    of(s.labels).buckets[i] = s.value
    return totals


@dataclass(frozen=True)
class UsageReading:
    """The end of an interval: a meter started at it, the process's profile and the model
    counters up to it."""

    meter: Meter
    profile: Profile
    totals: dict[str, _Totals]
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class UsageRecorder:
    """Records ``serve`` runs for ``models`` every ``interval_s`` seconds (see the module);
    ``whole_process``: the process exists to serve, so its start-up counts from its start."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        metrics: ServerMetrics,
        registry: Registry,
        *,
        interval_s: float,
        settings: dict[str, Any],
        whole_process: bool = False,
    ) -> None:
        self.models = list(models)
        self.metrics = metrics
        self.registry = registry
        self.interval_s = interval_s
        self.settings = settings
        # the start-up record of a process that only serves counts from its start (imports,
        # registry, loading, warming); a server inside a larger process from here
        self._meter = Meter.since_process_start() if whole_process else Meter().__enter__()
        self._since = datetime.now(UTC)
        self._last = _snapshot(metrics)
        # a flush cancelled on the loop goes on in its thread: the one at stop must wait for it
        self._lock = threading.Lock()

    def read(self) -> UsageReading:
        """The figures since the last record, taken now: cheap, so the event loop can close an
        interval at an exact moment (start-up, before the first request) and write it later."""
        return UsageReading(Meter().__enter__(), self._meter.read(), _snapshot(self.metrics))

    def flush(self, kind: str = "interval", reading: UsageReading | None = None) -> int:
        """Record what happened since the last record, up to ``reading`` (default: now);
        returns how many records were written. Blocking (a registry write): call it in a
        thread from the event loop."""
        with self._lock:
            return self._flush(kind, reading or self.read())

    def _flush(self, kind: str, reading: UsageReading) -> int:
        meter, profile, now = reading.meter, reading.profile, reading.totals
        served = [(m, m.runner) for m in self.models if m.runner is not None]
        deltas = {m.name: now.get(m.name, _Totals()).minus(self._last.get(m.name, _Totals()))
                  for m, _ in served}  # fmt: skip
        compute = sum(d.compute_s for d in deltas.values())
        records = []
        for model, runner in served:
            d = deltas[model.name]
            share = d.compute_s / compute if compute > 0 else 1 / len(served)
            part = dataclasses.replace(
                profile, cpu_seconds=profile.cpu_seconds * share,
                cpu_energy_j=None if profile.cpu_energy_j is None else profile.cpu_energy_j * share,
                gpu_seconds=profile.gpu_seconds * share,
                gpu_energy_j=None if profile.gpu_energy_j is None else profile.gpu_energy_j * share,
            )  # fmt: skip
            details = {
                "kind": kind, "started_at": self._since.isoformat(timespec="milliseconds"),
                "requests": int(sum(d.codes.values())), "codes": {k: int(v) for k, v in d.codes.items()},
                "compute_s": round(d.compute_s, 6), "cpu_share": round(share, 4),
                "latency": {"le": list(LATENCY_BUCKETS), "cumulative": [int(b) for b in d.buckets],
                            "sum_s": round(d.latency_s, 6)},
                "server": self.settings,
            }  # fmt: skip
            records.append(
                (runner.name, runner.version, run_record("serve", part, int(d.rows), details))
            )
        if records:
            self.registry.record_runs(records)  # on failure the next flush covers this interval
        self._meter, self._since, self._last = meter, reading.at, now
        return len(records)

    async def run(self) -> None:
        """Flush every ``interval_s`` until cancelled; a failed write is logged and retried."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush_soon()

    async def flush_soon(self, kind: str = "interval", reading: UsageReading | None = None) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.flush, kind, reading)
        except Exception:  # the ledger must never take the server down
            log.exception("recording serving usage failed; the next interval will include it")
