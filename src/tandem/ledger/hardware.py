"""The machine a phase ran on, as recorded beside its figures: CPU model, cores, memory, GPUs."""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

from tandem.ledger.energy import gpus

__all__ = ["host", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def host() -> dict[str, Any]:
    """This machine, as JSON: ``cpu`` (model), ``cores`` (usable by this process),
    ``machine_cores``, ``memory_gb``, ``gpus`` (names) and ``platform``."""
    memory = _memory_gb()
    return {
        "cpu": _cpu_model(),
        "cores": usable_cores(),
        "machine_cores": os.cpu_count() or 1,
        "memory_gb": round(memory, 1) if memory is not None else None,
        "gpus": list(gpus().names),
        "platform": f"{platform.system()} {platform.machine()}",
    }
