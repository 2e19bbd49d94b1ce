"""Prometheus metrics of one server (``GET /metrics``), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["LATENCY_BUCKETS", "ServerMetrics"]

#: request latency buckets: 1-1.5-2-3-5-7.5 steps from 0.1 ms to 10 s, fine enough that the
#: cost ledger's p50/p99 read from them (interpolated within a bucket) are within ~20 %
LATENCY_BUCKETS = (
    *(round(m * 10.0**e, 6) for e in range(-4, 1) for m in (1, 1.5, 2, 3, 5, 7.5)),
    10.0,
)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServerMetrics:
    """Every series the server exports; ``model`` labels each per-model series."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tandem_requests", "Requests answered, by model, protocol and status code.",
            ["model", "protocol", "code"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "tandem_request_seconds", "Time from a complete request to its response being written.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rows = Counter("tandem_rows", "Rows predicted.", ["model"], registry=r)
        self.batch_rows = Histogram(
            "tandem_batch_rows", "Rows per batch run by the model.", ["model"], buckets=_ROWS, registry=r
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "tandem_batch_seconds", "Compute time per batch.", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )  # fmt: skip
        self.queue_rows = Gauge(
            "tandem_queue_rows", "Rows waiting in the model's queue.", ["model"], registry=r
        )
        self.max_batch = Gauge(
            "tandem_max_batch_rows", "The batcher's current maximum batch.", ["model"], registry=r
        )
        self.cost_per_row = Gauge(
            "tandem_cost_per_row_seconds", "The cost model's a in t(n) = a·n + b.", ["model"], registry=r
        )  # fmt: skip
        self.cost_fixed = Gauge(
            "tandem_cost_fixed_seconds", "The cost model's b in t(n) = a·n + b.", ["model"], registry=r
        )  # fmt: skip
        self.compute_per_row = Gauge(
            "tandem_compute_cost_per_row_seconds",
            "a of the line fitted to compute times alone, which decides inline batches.",
            ["model"], registry=r,
        )  # fmt: skip
        self.compute_fixed = Gauge(
            "tandem_compute_cost_fixed_seconds",
            "b of the line fitted to compute times alone, which decides inline batches.",
            ["model"], registry=r,
        )  # fmt: skip
        self.version = Gauge(
            "tandem_model_version", "The registry version being served.", ["model"], registry=r
        )  # fmt: skip
        self.swaps = Counter(
            "tandem_model_swaps", "Versions switched to while serving.", ["model"], registry=r
        )
        self.ready = Gauge("tandem_ready", "1 when every model is loaded and warm.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
