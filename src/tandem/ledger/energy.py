"""Energy counters: RAPL for the CPU, NVML for NVIDIA GPUs, each read only where the machine
exposes it.

* **RAPL** (``/sys/class/powercap/intel-rapl:N``; AMD Zen exposes the same tree): cumulative
  microjoule counters per CPU package and its DRAM. They count the whole machine, so a phase's
  share is apportioned by this process's share of the machine's busy CPU time over the same
  span (``/proc/stat``). Since Linux 5.10 the counters are readable by root only: elsewhere
  they are simply absent, and energy is estimated from CPU time (see :mod:`tandem.ledger.cost`).
* **NVML** (the ``nvidia-ml-py`` bindings): the device's total energy counter (Volta and
  newer), for the devices this process holds a context on. GPU seconds are wall seconds × those
  devices: a GPU is billed while held, busy or not.

Nothing here raises for a missing counter: a reader that finds none reports ``None``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Gpus", "Rapl", "busy_cpu_seconds", "gpus", "rapl"]

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class _Zone:
    name: str
    counter: Path
    wraps_at: int  # max_energy_range_uj: the counter goes back to 0 past it


class Rapl:
    """The package and DRAM zones under ``root`` (a powercap tree) whose counters can be read.

    Example:
        >>> zones = Rapl(Path("/nonexistent"))
        >>> zones.available, zones.read()
        (False, None)
    """

    def __init__(self, root: Path = POWERCAP) -> None:
        self.zones: list[_Zone] = []
        for top in sorted(root.glob("intel-rapl:*")):
            # intel-rapl:N is a package; intel-rapl:N:M its sub-zones, of which only DRAM is
            # outside the package's own count (core and uncore are inside it)
            for zone in (top, *sorted(top.glob(f"{top.name}:*"))):
                if zone is not top and _text(zone / "name") != "dram":
                    continue
                try:
                    wraps = int(_text(zone / "max_energy_range_uj") or "0")
                    int((zone / "energy_uj").read_text())  # readable? (root only since 5.10)
                except (OSError, ValueError):
                    continue
                self.zones.append(
                    _Zone(_text(zone / "name") or zone.name, zone / "energy_uj", wraps)
                )

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def read(self) -> list[int] | None:
        """Each zone's counter in microjoules, or None when there is none (or one vanished)."""
        if not self.zones:
            return None
        try:
            return [int(z.counter.read_text()) for z in self.zones]
        except (OSError, ValueError):
            return None

    def joules(self, before: Sequence[int], after: Sequence[int]) -> float:
        """Energy between two :meth:`read` results, across a counter's wrap-around."""
        total = 0
        for zone, a, b in zip(self.zones, before, after, strict=True):
            total += b - a if b >= a else zone.wraps_at - a + b
        return total / 1e6

    def describe(self) -> str:
        return "RAPL " + "+".join(z.name for z in self.zones)

    def apportioned(
        self, before: Sequence[int], after: Sequence[int], busy: float, cpu: float, whose: str
    ) -> tuple[float, str]:
        """The machine's energy between two :meth:`read` results given to work that used
        ``cpu`` of the ``busy`` CPU seconds the machine spent meanwhile (RAPL counts the whole
        package), and the words that say so."""
        share = min(1.0, cpu / busy) if busy > 0 else 0.0
        return (
            self.joules(before, after) * share,
            f"{self.describe()} × {whose} {share:.0%} of busy CPU",
        )


@functools.cache
def rapl() -> Rapl:
    """This machine's RAPL zones, found once per process."""
    return Rapl()


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine spent on anything but idling so far (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class Gpus:
    """NVIDIA devices seen through NVML; :attr:`available` is False without driver or bindings."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self.handles: list[Any] = []
        self.names: list[str] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception:  # no bindings, no driver, no device: nothing to measure
            return
        self._nvml = pynvml
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            self.handles.append(handle)
            self.names.append(name.decode() if isinstance(name, bytes) else str(name))

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def read(self) -> tuple[int | None, ...]:
        """Every device's energy counter in millijoules (None where the device has none)."""
        values: list[int | None] = []
        for handle in self.handles:
            try:
                values.append(int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))
            except Exception:  # pre-Volta devices have no energy counter
                values.append(None)
        return tuple(values)

    def held(self, pid: int | None = None) -> list[int]:
        """Indices of the devices on which process ``pid`` (default: this one) has a context."""
        pid = os.getpid() if pid is None else pid
        found = []
        for i, handle in enumerate(self.handles):
            with contextlib.suppress(Exception):
                running = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if any(p.pid == pid for p in running):
                    found.append(i)
        return found


@functools.cache
def gpus() -> Gpus:
    """This machine's GPUs, initialised once per process (NVML start-up takes ~0.1 s)."""
    return Gpus()


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
