"""Meters for a phase of work: wall time, CPU seconds, peak memory, and energy where the
machine counts it (RAPL for CPUs, NVML for GPUs: :mod:`tandem.ledger.energy`).

Energy that no counter measured is left ``None`` here and estimated when it is priced
(:mod:`tandem.ledger.cost`), so that a record keeps what was measured apart from what a
coefficient (which the user may change later) made of it. Every figure says where it came from.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, fields
from types import TracebackType
from typing import Any

from tandem.ledger.energy import Rapl, busy_cpu_seconds, gpus, rapl

__all__ = ["Meter", "Profile", "add_cpu_elsewhere"]


@dataclass(frozen=True)
class Profile:
    """Resources one phase used.

    Attributes:
        wall_seconds: elapsed time.
        cpu_seconds: user + system CPU time of this process and its finished children.
        peak_rss_mb: the process's peak resident memory so far: an upper bound for the phase,
            since the peak may have been reached before it started. On Linux ``VmHWM`` of
            ``/proc/self/status``; ``getrusage``'s maxrss elsewhere, which Linux carries across
            ``exec``, so that a small process started by a large one would report the large
            one's peak (measured: 2,181 MB for a batch job whose own peak was ~340 MB).
        cpu_energy_j: CPU (and DRAM) energy from RAPL counters, apportioned to this process by
            its share of the machine's busy CPU time; None where no counter could be read.
        gpu_seconds: wall seconds × GPUs this process held a context on.
        gpu_energy_j: those GPUs' energy from NVML; None without a counter (or a GPU).
        gpus: the names of the GPUs held.
        energy_source: how the measured energies were obtained ("" when none was).
        cpu_elsewhere_seconds: the part of ``cpu_seconds`` spent by other processes on this
            one's behalf (Ray Train workers), as they reported it.
    """

    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    source: str = "getrusage; memory VmHWM"
    cpu_energy_j: float | None = None
    gpu_seconds: float = 0.0
    gpu_energy_j: float | None = None
    gpus: tuple[str, ...] = ()
    energy_source: str = ""
    cpu_elsewhere_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"gpus": list(self.gpus)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        """The inverse of :meth:`to_json`; keys it does not know (or lacks) are ignored."""
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in known}
        return cls(**kept | {"gpus": tuple(kept.get("gpus", ()))})


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)


class Meter:
    """Context manager measuring the code inside it.

    :meth:`lap` is cheap (two clock reads, ~2 µs) and meant for every epoch; :meth:`read`
    also reads the energy counters and memory (~50 µs with RAPL).

    Example:
        >>> with Meter() as m:
        ...     _ = sum(range(1000))
        >>> m.profile.wall_seconds >= 0
        True
    """

    @classmethod
    def since_process_start(cls) -> Meter:
        """A running meter whose wall and CPU time count from this process's start (Linux;
        elsewhere from now): what a server cost to start, imports included."""
        meter = cls().__enter__()
        started = process_started()
        if started is not None:
            meter._wall = meter._lap_wall = meter._wall - (time.monotonic() - started)
            meter._cpu = meter._lap_cpu = 0.0
        return meter

    def __init__(self, *, counters: Rapl | None = None) -> None:
        #: the RAPL zones to read (default: this machine's)
        self._rapl = counters if counters is not None else rapl()
        self._elsewhere_cpu = 0.0
        self._elsewhere: list[str] = []

    def __enter__(self) -> Meter:
        _RUNNING.append(self)
        self._gpus = gpus()
        self._rapl0 = self._rapl.read()
        self._busy0 = busy_cpu_seconds() if self._rapl0 is not None else None
        self._gpu0 = self._gpus.read() if self._gpus.available else None
        self._wall = self._lap_wall = time.perf_counter()
        self._cpu = self._lap_cpu = _cpu()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ValueError):
            _RUNNING.remove(self)
        self.profile = self.read()

    def lap(self) -> tuple[float, float]:
        """Wall and CPU seconds since the last lap (or the start)."""
        wall, cpu = time.perf_counter(), _cpu()
        lap = (wall - self._lap_wall, cpu - self._lap_cpu)
        self._lap_wall, self._lap_cpu = wall, cpu
        return lap

    def read(self) -> Profile:
        """The figures so far (the meter keeps running)."""
        wall, cpu = time.perf_counter() - self._wall, _cpu() - self._cpu
        sources: list[str] = []
        cpu_j = None
        now = self._rapl.read() if self._rapl0 is not None else None
        # /proc/stat is read only where there is energy to apportion by it
        busy = busy_cpu_seconds() if now is not None else None
        if now is not None and self._rapl0 is not None and self._busy0 is not None and busy:
            cpu_j, words = self._rapl.apportioned(
                self._rapl0, now, busy - self._busy0, cpu, "this process's"
            )
            sources.append(words)
        gpu_seconds, gpu_j, held = 0.0, None, []
        if self._gpu0 is not None:
            held = self._gpus.held()
            gpu_seconds = wall * len(held)
            after, before = self._gpus.read(), self._gpu0
            deltas = [
                a - b for i in held if (a := after[i]) is not None and (b := before[i]) is not None
            ]
            if held and len(deltas) == len(held):
                gpu_j = sum(deltas) / 1e3
                sources.append("NVML device energy counters (whole devices)")
        source = Profile.source
        if self._elsewhere:  # energy stays this process's: workers may run on other machines
            cpu += self._elsewhere_cpu
            source += "; + CPU of " + ", ".join(self._elsewhere)
        return Profile(
            wall, cpu, _peak_mb(), source, cpu_energy_j=cpu_j, gpu_seconds=gpu_seconds, gpu_energy_j=gpu_j,
            gpus=tuple(self._gpus.names[i] for i in held), energy_source="; ".join(sources),
            cpu_elsewhere_seconds=self._elsewhere_cpu,
        )  # fmt: skip


#: the meters running, outermost first (a phase inside a phase is counted by both)
_RUNNING: list[Meter] = []


def add_cpu_elsewhere(seconds: float, where: str) -> None:
    """Count CPU time that processes outside this one spent on its behalf (Ray Train
    workers, which are not its children) in every running meter; ``where`` says whose."""
    for meter in _RUNNING:
        meter._elsewhere_cpu += seconds
        if where not in meter._elsewhere:
            meter._elsewhere.append(where)


def _proc_stat(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` that follow the command name (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and all its threads so far (Linux), else None."""
    fields = _proc_stat(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_started() -> float | None:
    """When this process started, on the ``time.monotonic()`` clock (Linux), else None."""
    fields = _proc_stat("self")
    if fields is None or not hasattr(time, "CLOCK_BOOTTIME"):
        return None
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - max(0.0, age)
