"""Ledger records: a measured :class:`Profile` as a registry :class:`RunRecord`, and back.

A record keeps what was measured (wall and CPU seconds, peak memory, counter energies, GPU
seconds) and the machine it ran on; money, carbon and estimated energy are derived when a
report prices it, so a changed price table re-prices old records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tandem.ledger.hardware import host
from tandem.ledger.meter import Meter, Profile
from tandem.registry.store import Run, RunRecord

__all__ = ["EpochLog", "profile_of", "run_record"]


def run_record(phase: str, profile: Profile, rows: int, details: Mapping[str, Any]) -> RunRecord:
    """A record of ``phase`` ("train", "serve", "batch") with the profile's energy figures and
    this machine's description added to ``details``."""
    measured = profile.to_json()
    energy = {k: measured[k] for k in ("cpu_energy_j", "gpu_seconds", "gpu_energy_j", "gpus",
                                       "energy_source", "cpu_elsewhere_seconds")}  # fmt: skip
    return RunRecord(
        phase=phase, wall_seconds=profile.wall_seconds, cpu_seconds=profile.cpu_seconds,
        peak_rss_mb=profile.peak_rss_mb, rows=rows,
        details={**details, "energy": energy, "hardware": host()},
    )  # fmt: skip


def profile_of(run: Run) -> Profile:
    """The measured profile a record was made from."""
    return Profile.from_json(
        {"wall_seconds": run.wall_seconds, "cpu_seconds": run.cpu_seconds,
         "peak_rss_mb": run.peak_rss_mb, **run.details.get("energy", {})}
    )  # fmt: skip


class EpochLog:
    """Per-epoch wall and CPU seconds (and losses) of every fit of a training run, from a
    running :class:`Meter`'s laps: the per-epoch figures of a training record.

    Example:
        >>> from tandem.ledger.meter import Meter
        >>> with Meter() as meter:
        ...     log = EpochLog(meter)
        ...     on_epoch = log.fit("mlp", "fit")
        ...     on_epoch(1, {"val_loss": 0.5})
        >>> log.fits[0]["epoch"], log.fits[0]["val_loss"]
        ([1], [0.5])
    """

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.fits: list[dict[str, Any]] = []

    def fit(self, family: str, stage: str) -> Callable[[int, dict[str, float]], None]:
        """Start a fit; returns its epoch callback (see ``FitContext.on_epoch``)."""
        self.meter.lap()
        entry: dict[str, Any] = {"family": family, "stage": stage, "epoch": [], "wall_s": [],
                                 "cpu_s": []}  # fmt: skip
        self.fits.append(entry)

        def on_epoch(epoch: int, losses: dict[str, float]) -> None:
            wall, cpu = self.meter.lap()
            if "wall_s" in losses:  # timed where it ran (a Ray worker), not by this process
                losses = dict(losses)
                wall = losses.pop("wall_s")
            entry["epoch"].append(epoch)
            entry["wall_s"].append(round(wall, 6))
            entry["cpu_s"].append(round(cpu, 6))
            for key, value in losses.items():
                entry.setdefault(key, []).append(round(value, 6))

        return on_epoch
