"""Meters for a phase of work: wall time, CPU seconds and peak memory.

Later meters (energy, GPU) add fields; every figure says where it came from.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from types import TracebackType

__all__ = ["Meter", "Profile"]


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
    """

    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    source: str = "getrusage; memory VmHWM"

    def to_json(self) -> dict[str, float | str]:
        return asdict(self)


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

    Example:
        >>> with Meter() as m:
        ...     _ = sum(range(1000))
        >>> m.profile.wall_seconds >= 0
        True
    """

    def __enter__(self) -> Meter:
        self._wall = time.perf_counter()
        self._cpu = _cpu()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.profile = self.read()

    def read(self) -> Profile:
        """The figures so far (the meter keeps running)."""
        return Profile(time.perf_counter() - self._wall, _cpu() - self._cpu, _peak_mb())


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
