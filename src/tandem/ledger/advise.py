"""``tandem advise``: how to serve a model within a latency objective at the least cost,
measured on this machine, and which hardware each phase should run on.

A *configuration* is a variant of the model (``fp32``, the version itself, or one that
``tandem optimize`` registered from it: int8, pruned, distilled), ONNX Runtime intra-op
threads, the largest batch, and the number of server processes. Each configuration is measured by starting
a real ``tandem serve`` with it and loading it with :mod:`tandem.serving.loadgen` from a
second process, in two phases:

- **capacity**: closed loop (every connection sends again as soon as it is answered), the
  goodput (200s per second) once it is stable;
- **at the target rate**: open loop at ``--rps`` (requests go out on schedule whatever the
  answers, so a slow server cannot hide its queueing), the p99 latency and the CPU the server
  processes use; skipped when the capacity is below the target rate.

The stability rule: figures come in windows (default 1 s), and a phase ends once its last three
windows agree within 10% (goodput for capacity, server CPU for the target rate; CPU within the
clock's resolution too, 2 ticks, which is coarser at a few percent of a core); a phase that
never settles is reported ``unstable`` and its last three windows are used.

The sweep walks one dimension at a time from the defaults (variant, then threads, max batch,
processes), keeping the best value of each for the next; every variant is tried, and a
numeric dimension stops once a step gains less than 5% capacity: a machine with 2 cores is
not tried with 8 processes when 2 did not help. Every configuration measured enters the table; its cost is priced as the ledger
prices everything (:func:`tandem.ledger.cost.cost_of`): the server processes' CPU time and
energy over the measured windows, per million predictions at the target rate.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from tandem.errors import TandemError, UsageError
from tandem.ledger.cost import PriceTable, cost_of
from tandem.ledger.devices import (
    DeviceTable,
    NoEstimate,
    estimate_inference,
    estimate_training,
)
from tandem.ledger.energy import busy_cpu_seconds, rapl
from tandem.ledger.flops import graph_cost
from tandem.ledger.hardware import host, usable_cores
from tandem.ledger.meter import Profile, process_cpu_seconds
from tandem.ledger.records import profile_of
from tandem.registry import ModelVersion, Registry
from tandem.serving.workers import die_with_parent

__all__ = [
    "Advice",
    "Config",
    "Point",
    "Sweep",
    "advise",
    "cheapest",
    "confirm",
    "pareto",
    "settled",
    "sweep",
]

LOADGEN = Path(__file__).resolve().parents[1] / "serving" / "loadgen.py"
#: a step along a dimension that gains less capacity than this ends the dimension's walk
GAIN = 0.05
#: windows agree when (max - min) <= TOLERANCE x max ...
TOLERANCE = 0.10
#: ... over this many consecutive windows
SETTLED_WINDOWS = 3
#: finalists are within this fraction of the least cost (see :func:`confirm`) ...
FINALISTS = 0.25
#: ... and at most this many (besides the defaults)
MAX_FINALISTS = 3
#: the order the sweep walks the dimensions in
DIMENSIONS = ("variant", "threads", "max_batch", "processes")


@dataclass(frozen=True)
class Config:
    """One way to serve. ``max_batch`` 0 means the batcher learns it (the default)."""

    variant: str = "fp32"
    threads: int = 1
    max_batch: int = 0
    processes: int = 1

    @property
    def label(self) -> str:
        batch = "learnt" if self.max_batch == 0 else str(self.max_batch)
        return (
            f"{self.variant}, {self.threads} thread{'s' * (self.threads > 1)}, batch {batch}, "
            f"{self.processes} process{'es' * (self.processes > 1)}"
        )

    def serve_args(self) -> list[str]:
        """The ``tandem serve`` options of everything but the variant (which is a version)."""
        args = ["--threads", str(self.threads), "--processes", str(self.processes)]
        return args + (["--max-batch", str(self.max_batch)] if self.max_batch else [])


@dataclass(frozen=True)
class Phase:
    """One load phase, from its settled windows."""

    windows: int
    stable: bool
    goodput: float  # 200s per second, median of the settled windows
    p50_ms: float | None
    p99_ms: float | None  # the worst p99 of the settled windows
    cores: float  # server CPU seconds per second over the settled windows
    client_cores: float  # the load generator's, which shares this machine
    ok: int
    failed: int  # non-200 answers, errors, requests the client could not send
    profile: Profile  # the server processes over the settled windows


@dataclass(frozen=True)
class Point:
    """A measured configuration."""

    config: Config
    capacity: Phase
    target: Phase | None  # None: capacity below the target rate, not tried
    rps: float
    slo_p99_ms: float
    cost_per_million: float | None = None  # money per 1M predictions at the target rate
    joules_per_prediction: float | None = None
    energy_source: str = ""
    #: times measured (see :func:`confirm`), and in how many of them it met the objective
    rounds: int = 1
    met_rounds: int | None = None

    @property
    def met_once(self) -> bool:
        """Whether this measurement (the median one, after :func:`confirm`) met the objective."""
        t = self.target
        return (
            t is not None
            and t.failed == 0
            and t.p99_ms is not None
            and t.p99_ms <= self.slo_p99_ms
            and t.goodput >= 0.95 * self.rps
        )

    @property
    def meets(self) -> bool:
        """Met the objective, in every round it was measured."""
        return self.met_once and (self.met_rounds is None or self.met_rounds == self.rounds)

    @property
    def why_not(self) -> str:
        if self.met_once and not self.meets:
            return f"met the objective in {self.met_rounds} of {self.rounds} rounds"
        t = self.target
        if t is None:
            return f"capacity {self.capacity.goodput:,.0f}/s is below {self.rps:,.0f}/s"
        if t.failed:
            return f"{t.failed} requests failed or were not sent"
        if t.p99_ms is None:
            return "no request succeeded at the target rate"
        if t.p99_ms > self.slo_p99_ms:
            return f"p99 {t.p99_ms:.1f} ms is over {self.slo_p99_ms:g} ms"
        if t.goodput < 0.95 * self.rps:
            return f"kept up with {t.goodput:,.0f}/s of {self.rps:,.0f}/s"
        return ""


def settled(values: Sequence[float], floor: float = 0.0) -> bool:
    """Whether the last :data:`SETTLED_WINDOWS` values agree: their spread is within
    :data:`TOLERANCE` of the largest, or within ``floor`` (a measuring resolution)."""
    if len(values) < SETTLED_WINDOWS:
        return False
    last = values[-SETTLED_WINDOWS:]
    spread = max(last) - min(last)
    return spread <= max(TOLERANCE * max(last), floor)


def _chain(dimension: str, values: Sequence[Any]) -> list[Any]:
    # the learnt batch size (0) is its own option, not the first step of a walk upwards
    return sorted({v for v in values if not (dimension == "max_batch" and v == 0)})


def sweep(
    measure: Callable[[Config], Point],
    grid: Mapping[str, Sequence[Any]],
    *,
    base: Config | None = None,
    on_point: Callable[[Point], None] | None = None,
) -> list[Point]:
    """Measure ``base`` (default: the defaults), then walk each dimension of ``grid`` in turn
    (see the module's docstring); returns every point measured, each once, in order."""
    points: dict[Config, Point] = {}

    def get(config: Config) -> Point:
        if config not in points:
            points[config] = measure(config)
            if on_point is not None:
                on_point(points[config])
        return points[config]

    best = base or Config()
    get(best)
    for dim in DIMENSIONS:
        chain = _chain(dim, grid.get(dim, ()))
        previous: Point | None = None
        for value in chain:
            point = get(replace(best, **{dim: value}))
            if (
                dim != "variant"  # variants are not steps of a walk: each is tried
                and previous is not None
                and point.capacity.goodput < (1 + GAIN) * previous.capacity.goodput
            ):
                break
            previous = point
        # the best value of this dimension, the others held, goes on to the next one
        held = [p for c, p in points.items() if replace(c, **{dim: getattr(best, dim)}) == best]
        best = max(held, key=_rank).config
    return list(points.values())


def _rank(point: Point) -> tuple[bool, float]:
    # what a sweep keeps: first what meets the objective, then the most capacity
    return (point.meets, point.capacity.goodput)


def pareto(points: Sequence[Point]) -> list[int]:
    """Indices of the points no other beats on every count: capacity (more), p99 at the target
    rate and cost per prediction (less; unmeasured counts as worst)."""

    def key(p: Point) -> tuple[float, float, float]:
        p99 = p.target.p99_ms if p.target is not None and p.target.p99_ms is not None else math.inf
        cost = p.cost_per_million if p.cost_per_million is not None else math.inf
        return (-p.capacity.goodput, p99, cost)

    keys = [key(p) for p in points]
    return [
        i
        for i, k in enumerate(keys)
        if not any(
            all(a <= b for a, b in zip(o, k, strict=True)) and o != k
            for j, o in enumerate(keys)
            if j != i
        )
    ]


def cheapest(points: Sequence[Point]) -> Point | None:
    """The point that meets the objective at the least cost per prediction, or None when none
    does. Costs within :data:`GAIN` of the least are a tie (this machine's noise is larger
    than that; a sweep does not resolve finer): of those, the one reserving the fewest cores
    (threads × processes) wins, then the learnt batch size (the default), then the lower p99."""
    meeting = [p for p in points if p.meets and p.cost_per_million is not None]
    if not meeting:
        return None
    least = min(p.cost_per_million or 0.0 for p in meeting)
    tied = [p for p in meeting if (p.cost_per_million or 0.0) <= (1 + GAIN) * least]
    return min(
        tied,
        key=lambda p: (
            p.config.threads * p.config.processes,
            p.config.max_batch != 0,
            p.target.p99_ms if p.target is not None and p.target.p99_ms is not None else 0.0,
        ),
    )


def confirm(
    measure: Callable[[Config], Point],
    points: Sequence[Point],
    *,
    rounds: int,
    on_point: Callable[[Point], None] | None = None,
) -> list[Point]:
    """Measure the finalists ``rounds`` more times, in turns, and keep each one's median.

    One measurement of a configuration on a shared machine can be off by more than the
    differences between configurations (seen here: 5,342/s in the sweep, 3,212/s measured
    again). The finalists are those that met the objective within :data:`FINALISTS` of the
    least cost (at most :data:`MAX_FINALISTS`), and the defaults when they met it: what a user
    gets without advice is always in the final comparison. A finalist's figures become those
    of its median-cost measurement, and it meets the objective only if it did every time.

    When the finalists' medians come out dearer than a point measured once, that point would
    be :func:`cheapest` on one measurement: it is measured ``rounds`` more times too, and so on
    until the point :func:`cheapest` picks has been confirmed like the others.
    """
    meeting = [p for p in points if p.met_once and p.cost_per_million is not None]
    if rounds < 1 or not meeting:
        return list(points)
    least = min(p.cost_per_million or 0.0 for p in meeting)
    close = [p for p in meeting if (p.cost_per_million or 0.0) <= (1 + FINALISTS) * least]
    finalists = sorted(close, key=lambda p: p.cost_per_million or 0.0)[:MAX_FINALISTS]
    default = next((p for p in meeting if p.config == Config()), None)
    if default is not None and default not in finalists:
        finalists.append(default)
    runs: dict[Config, list[Point]] = {}
    pending = finalists
    while True:
        for p in pending:
            runs[p.config] = [p]
        for _ in range(rounds):
            for p in pending:
                again = measure(p.config)
                runs[p.config].append(again)
                if on_point is not None:
                    on_point(again)
        confirmed = [_median(runs[p.config]) if p.config in runs else p for p in points]
        best = cheapest(confirmed)
        if best is None or best.config in runs:  # ends: each turn confirms one point more
            return confirmed
        pending = [best]


def _median(runs: Sequence[Point]) -> Point:
    """One configuration's measurements as one: the median-cost one, with the rounds met."""
    ms = sorted(runs, key=lambda m: m.cost_per_million or math.inf)
    return replace(ms[len(ms) // 2], rounds=len(ms), met_rounds=sum(m.met_once for m in ms))


# --- measuring -----------------------------------------------------------------------------


class AdviseError(TandemError):
    """A configuration could not be measured (the server would not start, the load failed)."""


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux), for the server's CPU across its processes."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _max_connections() -> int:
    """Connections one load generator may open: 4,096, or fewer where the open-file limit is
    lower (each is a file descriptor), keeping room for everything else."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return 1024
    return 4096 if soft == resource.RLIM_INFINITY else max(32, min(4096, soft - 128))


def _rss_mb(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


@dataclass
class _Mark:
    """What the counters read at a window's end."""

    at: float
    cpu: float  # server tree CPU seconds
    client_cpu: float
    rapl: list[int] | None
    busy: float | None


def _mark(server: int, client: int) -> _Mark:
    pids = _tree(server)
    cpu = sum(process_cpu_seconds(p) or 0.0 for p in pids)
    counters = rapl().read()
    return _Mark(
        time.monotonic(), cpu, process_cpu_seconds(client) or 0.0, counters,
        busy_cpu_seconds() if counters is not None else None,
    )  # fmt: skip


@dataclass
class Sweep:
    """Measures configurations of one model on this machine (see the module's docstring).

    Args:
        ref: the model version to serve (``NAME:VERSION``).
        rps: the target rate, requests per second.
        slo_p99_ms: the latency objective at that rate.
        body: one request (MLflow ``/invocations`` JSON).
        rows: predictions per request.
        window_s / max_windows: the stability rule's window, and when a phase gives up.
        env: the environment of the server processes (``TANDEM_HOME`` among it).
        variants: the version each variant serves (see :func:`optimized_variants`); a
            variant not named here serves ``ref``.
    """

    ref: str
    rps: float
    slo_p99_ms: float
    body: bytes
    rows: int
    prices: PriceTable
    window_s: float = 1.0
    max_windows: int = 10
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    variants: dict[str, str] = field(default_factory=dict)
    _body_file: Path | None = None

    def close(self) -> None:
        """Remove the request body's temporary file."""
        if self._body_file is not None:
            self._body_file.unlink(missing_ok=True)
            self._body_file = None

    def measure(self, config: Config) -> Point:
        with self._server(config) as (pid, port):
            url = f"http://127.0.0.1:{port}/invocations"
            connections = min(512, max(64, config.max_batch))
            capacity = self._phase(
                pid, url, ["--closed", "--connections", str(connections)], "goodput"
            )
            target = None
            if capacity.goodput >= self.rps:
                # enough connections for every request in flight at 3x the objective
                conns = min(
                    _max_connections(), max(32, math.ceil(self.rps * self.slo_p99_ms / 1e3 * 3))
                )
                target = self._phase(
                    pid, url, ["--rate", f"{self.rps:g}", "--connections", str(conns)], "cores"
                )
        point = Point(config, capacity, target, self.rps, self.slo_p99_ms)
        if target is None or target.ok == 0:
            return point
        cost = cost_of(target.profile, self.prices)
        predictions = target.ok * self.rows
        return replace(
            point,
            cost_per_million=cost.money / predictions * 1e6,
            joules_per_prediction=cost.energy_j / predictions,
            energy_source=cost.energy_source,
        )

    @contextmanager
    def _server(self, config: Config) -> Iterator[tuple[int, int]]:
        from tandem.serving.loadtest import announced_port

        ref = self.variants.get(config.variant, self.ref)
        command = [sys.executable, "-c", "from tandem.cli import main; main()", "serve", ref,
                   "--port", "0", "--ledger-interval", "0", "--log-sample", "0", "--poll-s", "0",
                   *config.serve_args()]  # fmt: skip
        proc = subprocess.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        try:
            try:
                port = announced_port(proc, timeout=120)
            except RuntimeError as exc:
                raise AdviseError(f"{config.label}: {exc}") from None
            yield proc.pid, port
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                for pid in reversed(_tree(proc.pid)):
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()

    def _phase(self, server: int, url: str, args: list[str], steady: str) -> Phase:
        if self._body_file is None:
            handle, name = tempfile.mkstemp(prefix="tandem-advise-", suffix=".json")
            os.write(handle, self.body)
            os.close(handle)
            self._body_file = Path(name)
        command = [sys.executable, str(LOADGEN), "--url", url, "--body-file", str(self._body_file),
                   "--window", f"{self.window_s:g}",
                   "--duration", f"{self.window_s * self.max_windows:g}", *args]  # fmt: skip
        # its stderr goes to a file: a pipe nobody reads while it runs could fill and block it
        with tempfile.TemporaryFile(mode="w+") as errors:
            client = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                preexec_fn=die_with_parent,
            )
            assert client.stdout is not None
            marks: list[_Mark] = []
            windows: list[dict[str, Any]] = []
            figures: list[float] = []
            # /proc counts CPU in clock ticks, per process: the resolution of a window's figure
            ticks = len(_tree(server))
            floor = (
                2 * ticks / os.sysconf("SC_CLK_TCK") / self.window_s if steady == "cores" else 0.0
            )
            stable = False
            try:
                for line in client.stdout:
                    data = orjson.loads(line)
                    if data.get("started"):
                        marks = [_mark(server, client.pid)]  # window 1 starts now
                        continue
                    if "window" not in data:
                        break  # the summary: everything needed came in the windows
                    if stable or not marks:  # after the stop signal: partial, not a settled one
                        continue
                    marks.append(_mark(server, client.pid))
                    windows.append(data)
                    a, b = marks[-2], marks[-1]
                    figures.append(
                        data["goodput"] if steady == "goodput" else (b.cpu - a.cpu) / (b.at - a.at)
                    )
                    if settled(figures, floor):
                        stable = True
                        client.send_signal(signal.SIGINT)  # ends the sending; the summary follows
                client.wait(30)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
                errors.seek(0)
                told = errors.read().strip()[-500:]
        if len(windows) < SETTLED_WINDOWS:
            raise AdviseError(
                f"the load generator gave {len(windows)} windows of figures, not "
                f"{SETTLED_WINDOWS}{': ' + told if told else ''}"
            )
        return _phase_of(windows, marks, stable, _rss_mb(_tree(server)))


def _phase_of(
    windows: list[dict[str, Any]], marks: list[_Mark], stable: bool, rss_mb: float
) -> Phase:
    """The figures of the last three windows: those that settled, when they did."""
    n = SETTLED_WINDOWS
    last = windows[-n:]
    first_mark, last_mark = marks[-n - 1], marks[-1]
    wall = last_mark.at - first_mark.at
    cpu = last_mark.cpu - first_mark.cpu
    cpu_j: float | None = None
    source = ""
    if (
        first_mark.rapl is not None
        and last_mark.rapl is not None
        and first_mark.busy is not None
        and last_mark.busy is not None
    ):
        cpu_j, source = rapl().apportioned(
            first_mark.rapl, last_mark.rapl, last_mark.busy - first_mark.busy, cpu, "the server's"
        )
    goodputs = sorted(w["goodput"] for w in last)
    p99s = [w["p99_ms"] for w in last if w["p99_ms"] is not None]
    p50s = sorted(w["p50_ms"] for w in last if w["p50_ms"] is not None)
    failed = sum(w["other"] + w["errors"] + w["dropped"] for w in last)
    return Phase(
        windows=len(windows),
        stable=stable,
        goodput=goodputs[len(goodputs) // 2],
        p50_ms=p50s[len(p50s) // 2] if p50s else None,
        p99_ms=max(p99s) if p99s else None,
        cores=cpu / wall if wall > 0 else 0.0,
        client_cores=(last_mark.client_cpu - first_mark.client_cpu) / wall if wall > 0 else 0.0,
        ok=sum(w["ok"] for w in last),
        failed=failed,
        profile=Profile(
            wall,
            cpu,
            rss_mb,
            "/proc/PID/stat of the server processes; VmRSS",
            cpu_energy_j=cpu_j,
            energy_source=source,
        ),
    )


def parse_list(option: str, text: str | None, default: Sequence[int]) -> list[int]:
    """``"1,2,4"`` as integers >= 0 (>= 1 but for ``--max-batch``, where 0 means learnt)."""
    if text is None:
        return list(default)
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"{option} takes whole numbers separated by commas, e.g. 1,2,4; got {text!r}"
        ) from None
    low = 0 if option == "--max-batch" else 1
    if not values or any(v < low for v in values):
        raise UsageError(f"{option} values must be >= {low}; got {text!r}")
    return values


# --- the whole advice ----------------------------------------------------------------------


@dataclass(frozen=True)
class Advice:
    """What ``tandem advise`` found: every point measured, the Pareto front, the cheapest
    configuration meeting the objective, and the hardware recommendation."""

    name: str
    version: int
    rps: float
    slo_p99_ms: float
    rows_per_request: int
    currency: str
    machine: dict[str, Any]
    points: list[Point]
    front: list[int]
    best: Point | None
    hardware: dict[str, Any]
    notes: list[str]
    #: the version each variant served
    variants: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def point(p: Point, i: int) -> dict[str, Any]:
            data = asdict(p)
            for phase in ("capacity", "target"):
                if data[phase] is not None:
                    data[phase]["profile"] = getattr(p, phase).profile.to_json()
            return data | {"index": i, "label": p.config.label, "meets": p.meets,
                           "why_not": p.why_not, "pareto": i in self.front}  # fmt: skip

        return {
            "model": f"{self.name}:{self.version}",
            "objective": {
                "p99_ms": self.slo_p99_ms,
                "rps": self.rps,
                "rows_per_request": self.rows_per_request,
            },
            "currency": self.currency,
            "machine": self.machine,
            "points": [point(p, i) for i, p in enumerate(self.points)],
            "pareto": self.front,
            "best": None if self.best is None else self.points.index(self.best),
            "hardware": self.hardware,
            "notes": self.notes,
            "variants": self.variants,
        }


def default_grid(cores: int) -> dict[str, list[Any]]:
    """Powers of two up to the cores (and the cores), for threads and processes; the learnt
    batch size and 8, 32, 128 rows."""
    steps = sorted({2**i for i in range(8) if 2**i <= cores} | {cores})
    return {"threads": steps, "max_batch": [0, 8, 32, 128], "processes": steps}


def optimized_variants(registry: Registry, version: ModelVersion) -> dict[str, str]:
    """The ways to serve ``version``: ``fp32`` (itself) and, by technique, the versions
    ``tandem optimize`` registered from it (the newest of each), which passed its gate: faster
    at batch 1 and 256 here, within its ``--max-loss`` of the metric."""
    variants = {"fp32": version.ref}
    for other in sorted(registry.list_versions(version.name), key=lambda v: v.version):
        technique = other.tags.get("optimized")
        if technique and other.parent_version == version.version:
            variants[technique] = other.ref  # in version order: the newest wins
    return variants


def advise(
    registry: Registry,
    ref: str,
    *,
    rps: float,
    slo_p99_ms: float,
    grid: dict[str, list[Any]] | None = None,
    rows_per_request: int = 1,
    window_s: float = 1.0,
    max_windows: int = 10,
    confirm_rounds: int = 2,
    prices: PriceTable,
    devices: DeviceTable,
    on_point: Callable[[Point], None] | None = None,
) -> Advice:
    """Sweep the configurations of ``ref`` on this machine and advise (see the module)."""
    from tandem.bundle.store import load_bundle

    if not (0 < rps < math.inf and 0 < slo_p99_ms < math.inf):
        raise UsageError(
            f"--rps and --p99-ms must be > 0 and finite; got {rps:g} and {slo_p99_ms:g}"
        )
    if any(v > 64 for v in (grid or {}).get("processes", ())):
        raise UsageError("--processes values must be at most 64 (what tandem serve runs)")
    if rows_per_request < 1 or not window_s > 0 or max_windows < SETTLED_WINDOWS:
        raise UsageError(
            "--rows-per-request must be >= 1, --window-s > 0 and --max-windows >= "
            f"{SETTLED_WINDOWS}; got {rows_per_request}, {window_s:g}, {max_windows}"
        )
    if confirm_rounds < 0:
        raise UsageError(f"--confirm-rounds must be >= 0; got {confirm_rounds}")
    version = registry.get(ref)
    bundle = load_bundle(version.path, expected_digest=version.digest)
    graph_cost(bundle.graph)  # a graph that cannot be counted fails now, not after the sweep
    body = orjson.dumps({"dataframe_records": [bundle.manifest.example_row()] * rows_per_request})
    env = dict(os.environ) | {"TANDEM_HOME": str(registry.settings.home.absolute())}
    cores = usable_cores()
    variants = optimized_variants(registry, version)
    grid = dict(grid or default_grid(cores))
    grid.setdefault("variant", list(variants))
    unknown = [v for v in grid["variant"] if v not in variants]
    if unknown:
        raise UsageError(
            f"{version.ref} has no variant {', '.join(map(repr, unknown))}: it has "
            f"{', '.join(variants)} (tandem optimize {version.ref} registers more)"
        )
    variants = {v: variants[v] for v in ["fp32", *grid["variant"]] if v in variants}
    bench = Sweep(
        f"{version.name}:{version.version}", rps, slo_p99_ms, body, rows_per_request, prices,
        window_s=window_s, max_windows=max_windows, env=env, variants=variants,
    )  # fmt: skip
    notes = ["the load generator runs on this machine too; its CPU is shown apart and not priced"]
    if len(variants) == 1:
        notes.insert(0, f"fp32 is the only variant tried: tandem optimize {version.ref} registers "
                        "int8, pruned or distilled versions that advise then compares")  # fmt: skip
    else:
        notes.insert(0, "variants are versions tandem optimize registered from this one, each "
                        "within its gate's loss of the metric: "
                        + ", ".join(f"{k} = {v}" for k, v in variants.items()))  # fmt: skip
    try:
        points = sweep(bench.measure, grid, on_point=on_point)
        points = confirm(bench.measure, points, rounds=confirm_rounds, on_point=on_point)
    finally:
        bench.close()
    unstable = [
        p.config.label
        for p in points
        if not p.capacity.stable or (p.target and not p.target.stable)
    ]
    if unstable:
        notes.append(
            f"{len(unstable)} configuration(s) never settled within {max_windows} windows "
            f"(figures from their last {SETTLED_WINDOWS}): " + "; ".join(unstable)
        )
    best = cheapest(points)
    if best is not None and best.config.variant != "fp32":
        notes.insert(0, f"the best configuration serves {variants[best.config.variant]} "
                        f"({best.config.variant} of {version.ref})")  # fmt: skip
    hardware = _hardware(registry, version, bundle.graph, points, best, rps * rows_per_request,
                         slo_p99_ms, prices, devices, cores)  # fmt: skip
    return Advice(
        name=version.name, version=version.version, rps=rps, slo_p99_ms=slo_p99_ms,
        rows_per_request=rows_per_request, currency=prices.currency, machine=host(),
        points=points, front=pareto(points), best=best, hardware=hardware, notes=notes,
        variants=variants,
    )  # fmt: skip


def _hardware(
    registry: Registry,
    version: ModelVersion,
    graph: bytes,
    points: list[Point],
    best: Point | None,
    predictions_per_s: float,
    slo_p99_ms: float,
    prices: PriceTable,
    devices: DeviceTable,
    cores: int,
) -> dict[str, Any]:
    """Where to train and where to serve: this machine's figures, measured, beside every
    declared GPU's, estimated from the graph's FLOPs and the device's specs."""
    cost = graph_cost(graph)
    gpus = [d for d in devices.devices.values() if d.kind == "gpu"]
    # -- inference
    options: list[dict[str, Any]] = []
    if best is not None and best.target is not None:
        options.append({
            "device": f"this machine's CPU ({best.target.cores:.2f} of {cores} cores busy)",
            "estimated": False, "meets": True, "per_million": best.cost_per_million,
            "p99_ms": best.target.p99_ms, "how": f"measured: {best.config.label}",
            "figures": f"p99 {best.target.p99_ms:.2f} ms; {best.config.label}",
        })  # fmt: skip
    # a GPU server batches what arrives while the previous batch runs: about half the
    # objective's worth of rows, at most the batcher's limit
    batch = max(1, min(256, int(predictions_per_s * slo_p99_ms / 2e3)))
    for device in gpus:
        est = estimate_inference(cost, device, batch=batch, assumptions=devices.assumptions)
        hourly = device.hourly_price(prices)
        meets = est.rows_per_s >= predictions_per_s and 2 * est.seconds * 1e3 <= slo_p99_ms
        options.append({
            "device": device.name, "estimated": True, "meets": meets,
            "per_million": None if hourly is None else hourly / (predictions_per_s * 3600) * 1e6,
            "p99_ms": 2 * est.seconds * 1e3, "capacity": est.rows_per_s,
            "figures": f"p99 ≈ {2 * est.seconds * 1e3:.3g} ms (2 batches of {batch} rows), "
                       f"up to {est.rows_per_s:,.0f} rows/s",
            "how": est.method + " — the GPU is held whole at any load: priced per hour",
        })  # fmt: skip
    serve = _pick(options, "per_million")
    # -- training: the final fit, measured here, against each GPU's estimate for it
    runs = registry.runs(version.name, version.version, phase="train")
    training: list[dict[str, Any]] = []
    whole: dict[str, Any] | None = None
    if runs:
        run = runs[-1]
        profile = profile_of(run)
        whole = {"seconds": run.wall_seconds, "money": cost_of(profile, prices).money}
        family = str(run.details.get("family", version.family))
        rows = int((run.details.get("rows") or {}).get("train", 0))
        fits = [e for e in run.details.get("epochs", []) if e.get("family") == family
                and not str(e.get("stage", "")).startswith("cv")]  # fmt: skip
        epochs = len(fits[-1]["epoch"]) if fits else 1
        if fits:  # the final fit's own laps: like for like with the estimates below
            wall, cpu = sum(fits[-1]["wall_s"]), sum(fits[-1]["cpu_s"])
            fit = replace(profile, wall_seconds=wall, cpu_seconds=cpu, cpu_energy_j=None)
            training.append({
                "device": f"this machine's CPU ({cpu / max(wall, 1e-9):.2f} cores busy)",
                "estimated": False, "seconds": wall, "money": cost_of(fit, prices).money,
                "how": f"measured: the final {family} fit, {epochs} epochs over {rows:,} rows",
                "figures": f"{wall:.3g} s, the final fit ({epochs} epochs)",
            })  # fmt: skip
        for device in gpus:
            trained = estimate_training(cost, device, rows=max(rows, 1), epochs=epochs,
                                        family=family, assumptions=devices.assumptions)  # fmt: skip
            if isinstance(trained, NoEstimate):
                training.append({"device": device.name, "estimated": True, "seconds": None,
                                 "money": None, "how": trained.reason,
                                 "figures": "no estimate: " + trained.reason.split(":")[0]})  # fmt: skip
                continue
            hourly = device.hourly_price(prices)
            training.append({
                "device": device.name, "estimated": True, "seconds": trained.seconds,
                "money": None if hourly is None else hourly * trained.seconds / 3600,
                "how": trained.method, "figures": f"≈ {trained.seconds:.3g} s",
            })  # fmt: skip
    train = _pick(training, "money")
    return {
        "inference": {"options": options, "recommended": serve},
        "training": {"options": training, "recommended": train, "whole_run": whole},
        "flops_per_row": cost.flops_per_row,
    }


def _pick(options: list[dict[str, Any]], price: str) -> dict[str, Any] | None:
    """The cheapest option (by ``price``) that meets the objective; measured wins a tie."""
    fit = [o for o in options if o.get("meets", True) and o[price] is not None]
    if not fit:
        return None
    return min(fit, key=lambda o: (o[price], o["estimated"]))
