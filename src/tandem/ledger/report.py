"""``tandem report``: a model's measured training-vs-inference table and its lifetime cost.

Every figure comes from ledger records (:mod:`tandem.ledger.records`) of one version: its
training run, the serving intervals of every server that served it, and its batch jobs,
priced with a :class:`PriceTable`. The projection extends those measurements:

* a training run costs what the measured one did, once at day 0 and again every
  ``retrain_every`` days;
* a serving day costs ``idle × 86,400 s + per_request × requests_per_day`` of CPU time, where
  the idle CPU rate is measured on the intervals without requests (a server that idles still
  costs) and the CPU per request is read at the projected rate from what the busy intervals
  used beyond idling (batching makes a request cheaper as the rate grows);
* energy follows CPU time at the measured (or estimated) joules per CPU-second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

import numpy as np

from tandem.errors import UsageError
from tandem.ledger.cost import Cost, PriceTable, cost_of
from tandem.ledger.meter import Profile
from tandem.ledger.records import profile_of
from tandem.registry import Registry, Run

__all__ = [
    "BatchFigures", "Projection", "Report", "ServingFigures", "TrainingFigures", "build_report",
    "histogram_quantile", "money_text", "project", "projection_rows", "serving_profile",
    "table_rows",
]  # fmt: skip

DAYS_PER_MONTH = 365.25 / 12


@dataclass(frozen=True)
class PhaseCost:
    """Energy, money and carbon of one unit of work (a run, 1,000 predictions...)."""

    cpu_seconds: float
    energy_j: float
    money: float
    carbon_g: float
    energy_source: str

    @classmethod
    def of(cls, cost: Cost, scale: float = 1.0) -> PhaseCost:
        return cls(cost.core_hours * 3600 * scale, cost.energy_j * scale, cost.money * scale,
                   cost.carbon_g * scale, cost.energy_source)  # fmt: skip


@dataclass(frozen=True)
class TrainingFigures:
    """The version's training run."""

    family: str
    wall_seconds: float
    rows: int
    features: int
    epochs: int  # of the chosen family's final fit
    epoch_p50_s: float
    epoch_p99_s: float
    fits: int  # every fit the run made (candidates, cross-validation folds)
    peak_rss_mb: float
    per_run: PhaseCost
    hardware: str
    runs_of_model: int  # training runs recorded for every version of the name


@dataclass(frozen=True)
class ServingFigures:
    """Every serving interval of the version, summed."""

    intervals: int
    servers: int  # start-ups recorded
    wall_seconds: float
    requests: int
    ok: int
    predictions: int
    latency_p50_s: float | None
    latency_p99_s: float | None
    cpu_seconds: float
    startup_cpu_seconds: float  # per start-up, median
    #: fitted CPU model: cpu = idle_cpu_per_s × wall + cpu_per_request × requests
    idle_cpu_per_s: float
    cpu_per_request: float
    #: (requests/s, CPU seconds per request beyond idling) measured at each rate seen, by
    #: rate: batching makes a request cheaper as the rate grows (measured: 0.96 ms at 200
    #: req/s, 0.64 ms at 500), so a projection reads the cost at its own rate
    rate_curve: list[tuple[float, float]]
    requests_per_day_observed: float
    peak_rss_mb: float
    #: measured by a counter, else None (and energy is estimated from CPU time)
    joules_per_cpu_s: float | None
    per_1k: PhaseCost  # per 1,000 predictions, measured
    per_1k_requests: PhaseCost
    hardware: str


@dataclass(frozen=True)
class BatchFigures:
    jobs: int
    rows: int
    wall_seconds: float
    rows_per_second: float
    peak_rss_mb: float
    per_1k: PhaseCost
    hardware: str


@dataclass(frozen=True)
class Projection:
    """Cumulative cost over the model's life, day by day (index 0 = day 0, after training)."""

    requests_per_day: float
    requests_source: str
    months: float
    retrain_every_days: float | None
    days: list[int]
    training_money: list[float]
    inference_money: list[float]
    training_carbon_g: list[float]
    inference_carbon_g: list[float]
    training_energy_j: float
    inference_energy_j: float
    retrains: int
    #: the first day cumulative inference spend reaches cumulative training spend (None: never
    #: within the horizon)
    crossover_day: int | None
    inference_share: float
    #: False when the projected rate is outside the rates the server was measured at (the
    #: cost per request of the nearest measured rate is used then)
    within_measured_rates: bool = True


@dataclass(frozen=True)
class Report:
    name: str
    version: int
    currency: str
    prices: dict[str, Any]
    training: TrainingFigures | None
    serving: ServingFigures | None
    batch: BatchFigures | None
    projection: Projection | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build_report(
    registry: Registry,
    ref: str,
    prices: PriceTable,
    *,
    requests_per_day: float | None = None,
    months: float = 12.0,
    retrain_every: float | None = 30.0,
) -> Report:
    """The report of ``ref`` (NAME: its newest version) from its ledger records.

    Raises:
        UsageError: a negative or zero horizon, a negative rate.
        NotFoundError: no such model or version.
    """
    if not months > 0:
        raise UsageError(f"--months must be > 0; got {months}")
    if requests_per_day is not None and requests_per_day < 0:
        raise UsageError(f"--requests-per-day must be >= 0; got {requests_per_day}")
    if retrain_every is not None and not retrain_every > 0:
        raise UsageError(f"--retrain-every must be > 0 days; got {retrain_every}")
    version = registry.get(ref)
    runs = registry.runs(version.name, version.version)
    notes: list[str] = []
    training = _training(
        [r for r in runs if r.phase == "train"],
        len(registry.runs(version.name, phase="train")),
        prices,
    )
    serving = _serving([r for r in runs if r.phase == "serve"], prices)
    batch = _batch([r for r in runs if r.phase == "batch"], prices)
    if training is None:
        notes.append(f"{version.ref} has no training record (trained before the ledger existed)")
    if serving is None:
        notes.append(f"{version.ref} has not been served yet: run `tandem serve {version.ref}`")
    projection = None
    if training is not None and serving is not None:
        source = "given"
        if requests_per_day is None:
            requests_per_day, source = serving.requests_per_day_observed, "observed while served"
        projection = project(
            training, serving, requests_per_day=requests_per_day, months=months,
            retrain_every=retrain_every, prices=prices, requests_source=source,
        )  # fmt: skip
        if not projection.within_measured_rates:
            seen = ", ".join(f"{r:,.1f}" for r, _ in serving.rate_curve)
            notes.append(
                f"the projection's {requests_per_day / 86400:,.2f} requests/s is outside the "
                f"rates {version.ref} was measured at ({seen} requests/s); the cost per request "
                "of the nearest is used: serve it at that rate for a while to measure it"
            )
    else:
        notes.append("no projection: it needs both a training record and serving records")
    return Report(
        version.name, version.version, prices.currency, prices.to_json(), training, serving,
        batch, projection, notes,
    )  # fmt: skip


# -- the phases -----------------------------------------------------------------------------------


def _hardware(runs: Sequence[Run]) -> str:
    seen = []
    for run in runs:
        hw = run.details.get("hardware", {})
        gpus = hw.get("gpus") or []
        text = f"{hw.get('cpu', 'unknown CPU')}, {hw.get('cores', '?')} cores" + (
            ", " + ", ".join(gpus) if gpus else ", no GPU"
        )
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def _total(runs: Sequence[Run]) -> Profile:
    """The runs' profiles summed (peak memory: the highest)."""
    profiles = [profile_of(r) for r in runs]
    # a sum of energies is measured only if every part of it was
    cpu_j = [p.cpu_energy_j for p in profiles]
    gpu_j = [p.gpu_energy_j for p in profiles if p.gpus]
    return Profile(
        sum(p.wall_seconds for p in profiles), sum(p.cpu_seconds for p in profiles),
        max(p.peak_rss_mb for p in profiles),
        cpu_energy_j=_sum_measured(cpu_j),
        gpu_seconds=sum(p.gpu_seconds for p in profiles),
        gpu_energy_j=_sum_measured(gpu_j) if gpu_j else None,
        gpus=tuple(sorted({g for p in profiles for g in p.gpus})),
        energy_source="; ".join(sorted({p.energy_source for p in profiles if p.energy_source})),
    )  # fmt: skip


def _sum_measured(values: Sequence[float | None]) -> float | None:
    return None if None in values else sum(v for v in values if v is not None)


def _training(runs: Sequence[Run], of_model: int, prices: PriceTable) -> TrainingFigures | None:
    if not runs:
        return None
    run = runs[-1]
    d = run.details
    final = [
        f for f in d.get("epochs", []) if f["stage"] == "fit" and f["family"] == d.get("family")
    ]
    walls = final[0]["wall_s"] if final else []
    return TrainingFigures(
        family=str(d.get("family", "?")), wall_seconds=run.wall_seconds, rows=run.rows,
        features=int(d.get("features", 0)), epochs=len(walls),
        epoch_p50_s=float(np.quantile(walls, 0.5)) if walls else math.nan,
        epoch_p99_s=float(np.quantile(walls, 0.99)) if walls else math.nan,
        fits=len(d.get("epochs", [])), peak_rss_mb=run.peak_rss_mb,
        per_run=PhaseCost.of(cost_of(profile_of(run), prices)),
        hardware=_hardware([run]), runs_of_model=of_model,
    )  # fmt: skip


def histogram_quantile(q: float, le: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (bounds ``le`` plus +Inf last), linearly
    interpolated within its bucket as Prometheus's ``histogram_quantile`` does.

    Example:
        >>> histogram_quantile(0.5, [1.0, 2.0], [0, 10, 10])
        1.5
    """
    total = cumulative[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, count in enumerate(cumulative[:-1]):
        if count >= rank:
            lower = le[i - 1] if i > 0 else 0.0
            below = cumulative[i - 1] if i > 0 else 0.0
            inside = count - below
            return lower + (le[i] - lower) * ((rank - below) / inside if inside else 1.0)
    return le[-1]  # in the +Inf bucket: all that is known is that it is beyond the last bound


def _fit_cpu(intervals: Sequence[Run]) -> tuple[float, float]:
    """(idle CPU seconds per wall second, CPU seconds per request), both ≥ 0.

    The idle rate is measured on intervals without requests. Without any, it is taken as 0
    and every CPU second is charged to requests: a least-squares split of busy intervals is
    ill-conditioned when their rates are alike (measured: two intervals at 2,200 and 2,400
    req/s "fitted" an idle rate of 0.9 core and projected $360 a year instead of $0.25).
    """
    wall = np.array([r.wall_seconds for r in intervals])
    requests = np.array([float(r.details.get("requests", 0)) for r in intervals])
    cpu = np.array([r.cpu_seconds for r in intervals])
    quiet = requests == 0
    if quiet.all():
        return (float(cpu.sum() / wall.sum()) if wall.sum() else 0.0), 0.0
    idle = float(cpu[quiet].sum() / wall[quiet].sum()) if wall[quiet].sum() > 0 else 0.0
    busy = ~quiet
    per = float(cpu[busy].sum() - idle * wall[busy].sum()) / float(requests[busy].sum())
    return idle, max(0.0, per)


def _rate_curve(intervals: Sequence[Run], idle: float) -> list[tuple[float, float]]:
    """CPU per request beyond idling, by request rate: busy intervals grouped into bins a
    factor of 1.5 wide in rate, each bin's figure weighted by its requests."""
    bins: dict[int, list[float]] = {}
    for r in intervals:
        n = float(r.details.get("requests", 0))
        if n <= 0 or r.wall_seconds <= 0:
            continue
        rate = n / r.wall_seconds
        b = bins.setdefault(math.floor(math.log(rate, 1.5)), [0.0, 0.0, 0.0])
        b[0] += n
        b[1] += r.wall_seconds
        b[2] += max(0.0, r.cpu_seconds - idle * r.wall_seconds)
    return [(n / wall, cpu / n) for _, (n, wall, cpu) in sorted(bins.items())]


def cpu_per_request_at(serving: ServingFigures, rate: float) -> tuple[float, bool]:
    """CPU seconds per request at ``rate`` requests/s, interpolated on log(rate) between the
    measured rates; and whether ``rate`` lies within them (outside, the nearest is used)."""
    curve = serving.rate_curve
    if not curve:
        return serving.cpu_per_request, False
    rates = [r for r, _ in curve]
    inside = rates[0] / 1.5 <= rate <= rates[-1] * 1.5
    # np.interp holds the end values beyond the measured rates
    x = math.log(rate) if rate > 0 else -math.inf
    per = float(np.interp(x, [math.log(r) for r in rates], [c for _, c in curve]))
    return per, inside


def _serving(runs: Sequence[Run], prices: PriceTable) -> ServingFigures | None:
    intervals = [r for r in runs if r.details.get("kind") == "interval"]
    startups = [r for r in runs if r.details.get("kind") == "startup"]
    if not intervals:
        return None
    requests = sum(int(r.details.get("requests", 0)) for r in intervals)
    ok = sum(int(r.details.get("codes", {}).get("200", 0)) for r in intervals)
    predictions = sum(r.rows for r in intervals)
    latency = [r.details["latency"] for r in intervals if "latency" in r.details]
    le = latency[0]["le"] if latency else []
    merged = np.sum([h["cumulative"] for h in latency if h["le"] == le], axis=0) if latency else []
    total = _total(intervals)
    cost = cost_of(total, prices)
    idle, per_request = _fit_cpu(intervals)
    wall = total.wall_seconds
    return ServingFigures(
        intervals=len(intervals), servers=len(startups), wall_seconds=wall, requests=requests,
        ok=ok, predictions=predictions,
        latency_p50_s=histogram_quantile(0.5, le, list(merged)) if latency else None,
        latency_p99_s=histogram_quantile(0.99, le, list(merged)) if latency else None,
        cpu_seconds=total.cpu_seconds,
        startup_cpu_seconds=median(r.cpu_seconds for r in startups) if startups else 0.0,
        idle_cpu_per_s=idle, cpu_per_request=per_request, rate_curve=_rate_curve(intervals, idle),
        requests_per_day_observed=requests / wall * 86400 if wall else 0.0,
        peak_rss_mb=total.peak_rss_mb,
        joules_per_cpu_s=(
            total.cpu_energy_j / total.cpu_seconds
            if total.cpu_energy_j is not None and total.cpu_seconds else None
        ),
        per_1k=PhaseCost.of(cost, 1000 / predictions if predictions else math.nan),
        per_1k_requests=PhaseCost.of(cost, 1000 / requests if requests else math.nan),
        hardware=_hardware(intervals),
    )  # fmt: skip


def _batch(runs: Sequence[Run], prices: PriceTable) -> BatchFigures | None:
    if not runs:
        return None
    total = _total(runs)
    rows = sum(r.rows for r in runs)
    return BatchFigures(
        jobs=len(runs), rows=rows, wall_seconds=total.wall_seconds,
        rows_per_second=rows / total.wall_seconds if total.wall_seconds else 0.0,
        peak_rss_mb=total.peak_rss_mb,
        per_1k=PhaseCost.of(cost_of(total, prices), 1000 / rows if rows else math.nan),
        hardware=_hardware(runs),
    )  # fmt: skip


# -- the projection -------------------------------------------------------------------------------


def serving_profile(serving: ServingFigures, *, seconds: float, requests: float) -> Profile:
    """The profile the fitted model predicts for a server up ``seconds`` answering ``requests``."""
    per, _ = cpu_per_request_at(serving, requests / seconds if seconds else 0.0)
    cpu = serving.idle_cpu_per_s * seconds + per * requests
    j = serving.joules_per_cpu_s
    return Profile(seconds, cpu, serving.peak_rss_mb, cpu_energy_j=None if j is None else j * cpu)


def project(
    training: TrainingFigures,
    serving: ServingFigures,
    *,
    requests_per_day: float,
    months: float,
    retrain_every: float | None,
    prices: PriceTable,
    requests_source: str = "given",
) -> Projection:
    """Cumulative training and inference cost, day by day, over ``months``."""
    horizon = max(1, round(months * DAYS_PER_MONTH))
    days = list(range(horizon + 1))
    per_day = cost_of(serving_profile(serving, seconds=86400, requests=requests_per_day), prices)
    train_cost = training.per_run
    runs_by = [1 + (int(d // retrain_every) if retrain_every else 0) for d in days]
    training_money = [n * train_cost.money for n in runs_by]
    training_carbon = [n * train_cost.carbon_g for n in runs_by]
    inference_money = [d * per_day.money for d in days]
    inference_carbon = [d * per_day.carbon_g for d in days]
    crossover = next((d for d in days[1:] if inference_money[d] >= training_money[d]), None)
    _, inside = cpu_per_request_at(serving, requests_per_day / 86400)
    total = training_money[-1] + inference_money[-1]
    return Projection(
        requests_per_day=requests_per_day, requests_source=requests_source, months=months,
        retrain_every_days=retrain_every, days=days, training_money=training_money,
        inference_money=inference_money, training_carbon_g=training_carbon,
        inference_carbon_g=inference_carbon,
        training_energy_j=runs_by[-1] * train_cost.energy_j,
        inference_energy_j=horizon * per_day.energy_j,
        retrains=runs_by[-1] - 1, crossover_day=crossover,
        inference_share=inference_money[-1] / total if total else math.nan,
        within_measured_rates=inside,
    )  # fmt: skip


# -- rows for the terminal and the HTML page --------------------------------------------------------


def money_text(value: float, currency: str) -> str:
    """``value`` as money: two decimals, or three significant digits below a cent."""
    sign = "$" if currency == "USD" else currency + " "
    if not math.isfinite(value):
        return "-"
    if value == 0 or value >= 0.01:
        return f"{sign}{value:,.2f}"
    return f"{sign}{value:.2e}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or not math.isfinite(seconds) else f"{seconds * 1e3:,.2f} ms"


def _num(value: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(value) else f"{value:,.{digits}g}"


def _priced(c: PhaseCost, per: str, currency: str) -> list[str]:
    """The energy, cost and carbon cells of one unit of work."""
    return [f"{_num(c.energy_j)} J {per}", f"{money_text(c.money, currency)} {per}",
            f"{_num(c.carbon_g)} g CO2e {per}"]  # fmt: skip


def table_rows(report: Report) -> list[tuple[str, ...]]:
    """The training-vs-inference table: a header, then one row per measure."""
    t, s, b, cur = report.training, report.serving, report.batch, report.currency
    cols: list[tuple[str, list[str]]] = []
    if t is not None:
        c = t.per_run
        cols.append(("training", [
            "learn weights from data",
            f"{c.cpu_seconds:,.1f} CPU-s per run ({c.cpu_seconds / 3600:.4f} core-h), "
            f"{t.wall_seconds:,.1f} s wall",
            f"per epoch p50 {_ms(t.epoch_p50_s)}, p99 {_ms(t.epoch_p99_s)} "
            f"({t.epochs} epochs of {t.family})",
            f"{t.rows:,} rows × {t.features} features; {t.fits} fits",
            *_priced(c, "per run", cur),
            (f"every {report.projection.retrain_every_days:g} days (assumed)"
             if report.projection and report.projection.retrain_every_days else "once")
            + f"; {t.runs_of_model} run(s) recorded",
            t.hardware, c.energy_source,
        ]))  # fmt: skip
    if s is not None:
        c = s.per_1k
        freq = (f"{report.projection.requests_per_day:,.0f} requests/day "
                f"({report.projection.requests_source})" if report.projection else
                f"{s.requests_per_day_observed:,.0f} requests/day observed")  # fmt: skip
        cols.append(("inference (serving)", [
            "answer requests in real time",
            f"{c.cpu_seconds:,.3f} CPU-s per 1,000 predictions "
            f"({s.cpu_per_request * 1e3:,.3f} ms per request + idle {s.idle_cpu_per_s:.2%} of a core)",
            f"per request p50 {_ms(s.latency_p50_s)}, p99 {_ms(s.latency_p99_s)}",
            f"{s.predictions:,} predictions in {s.requests:,} requests over {s.wall_seconds:,.0f} s",
            *_priced(c, "per 1,000 predictions", cur),
            f"continuous: {freq}", s.hardware, c.energy_source,
        ]))  # fmt: skip
    if b is not None:
        c = b.per_1k
        cols.append(("inference (batch)", [
            "score files in bulk",
            f"{c.cpu_seconds:,.4f} CPU-s per 1,000 predictions",
            f"{b.rows_per_second:,.0f} rows/s",
            f"{b.rows:,} rows in {b.jobs} job(s)",
            *_priced(c, "per 1,000 predictions", cur),
            f"{b.jobs} job(s) recorded", b.hardware, c.energy_source,
        ]))  # fmt: skip
    measures = ["purpose", "compute", "latency", "data handled", "energy", "cost", "carbon",
                "frequency", "hardware", "energy from"]  # fmt: skip
    rows: list[tuple[str, ...]] = [("", *(name for name, _ in cols))]
    for i, measure in enumerate(measures):
        rows.append((measure, *(values[i] for _, values in cols)))
    return rows


def projection_rows(report: Report) -> list[tuple[str, ...]]:
    """The lifetime projection as rows: a header, then training, inference, total."""
    p, cur = report.projection, report.currency
    if p is None:
        return []
    train_money, infer_money = p.training_money[-1], p.inference_money[-1]
    train_g, infer_g = p.training_carbon_g[-1], p.inference_carbon_g[-1]
    total = train_money + infer_money
    horizon = f"{p.months:g} months ({p.days[-1]} days)"
    runs = f"{1 + p.retrains} run(s)" + (
        f" (every {p.retrain_every_days:g} days)" if p.retrain_every_days else ""
    )

    def share(value: float) -> str:
        return f"{value / total:.1%}" if total else "-"

    return [
        (f"over {horizon}", "cost", "share", "energy", "carbon", "what"),
        ("training", money_text(train_money, cur), share(train_money),
         f"{p.training_energy_j / 3.6e6:,.3g} kWh", f"{train_g / 1000:,.3g} kg CO2e", runs),
        ("inference", money_text(infer_money, cur), share(infer_money),
         f"{p.inference_energy_j / 3.6e6:,.3g} kWh", f"{infer_g / 1000:,.3g} kg CO2e",
         f"{p.requests_per_day:,.0f} requests/day ({p.requests_source})"),
        ("total", money_text(total, cur), "100%" if total else "-",
         f"{(p.training_energy_j + p.inference_energy_j) / 3.6e6:,.3g} kWh",
         f"{(train_g + infer_g) / 1000:,.3g} kg CO2e",
         "inference overtakes training on day " + str(p.crossover_day)
         if p.crossover_day is not None else "inference stays below training"),
    ]  # fmt: skip
