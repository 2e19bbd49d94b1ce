"""Prices and what a measured phase costs: energy (measured, or estimated and labelled so),
money and carbon.

The price table is TOML: the defaults ship in ``prices.toml`` beside this module (each figure
with its source and date); a user's file (``--prices FILE``, else ``TANDEM_PRICES``, else
``$TANDEM_HOME/prices.toml`` when it exists) overrides the keys it names::

    money  = core-hours × cpu_core_hour + GPU-hours × gpu_hour[type] + kWh × PUE × kwh
    carbon = kWh × PUE × grid_gco2e_per_kwh

Core-hours are CPU time used (cores × busy time), the unit a cloud's per-vCPU price is quoted
in; GPU-hours are GPUs held × wall time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tandem.config import Settings, layered_toml
from tandem.errors import ConfigError
from tandem.ledger.meter import Profile

__all__ = ["Cost", "Estimates", "PriceTable", "cost_of"]

_SCALARS = ("cpu_core_hour", "kwh", "pue", "grid_gco2e_per_kwh")


@dataclass(frozen=True, kw_only=True)
class Estimates:
    """Coefficients for energy no counter measured (see ``prices.toml``)."""

    cpu_watts_per_core: float
    memory_watts_per_gb: float
    gpu_watts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PriceTable:
    """Rates and coefficients; :meth:`load` merges a user's file over the defaults.

    Example:
        >>> table = PriceTable.load()
        >>> table.currency, table.gpu_rate("NVIDIA H100 80GB HBM3") > 0
        ('USD', True)
    """

    currency: str
    cpu_core_hour: float
    kwh: float
    pue: float
    grid_gco2e_per_kwh: float
    gpu_hour: dict[str, float]
    estimates: Estimates
    #: the files read, defaults first
    sources: tuple[str, ...]

    @classmethod
    def load(
        cls, path: str | Path | None = None, *, settings: Settings | None = None
    ) -> PriceTable:
        """The defaults, overridden by ``path`` (else ``TANDEM_PRICES``, else
        ``$TANDEM_HOME/prices.toml`` when it exists). A named file that is missing is an error."""
        data, sources = layered_toml(
            "tandem.ledger", "prices.toml", what="price table", env="TANDEM_PRICES",
            path=path, settings=settings, merge=_merge,
        )  # fmt: skip
        return cls._from(data, sources)

    @classmethod
    def _from(cls, data: dict[str, Any], sources: list[str]) -> PriceTable:
        est = data["estimates"]
        return cls(
            currency=str(data["currency"]),
            **{k: float(data[k]) for k in _SCALARS},
            gpu_hour={str(k): float(v) for k, v in data["gpu_hour"].items()},
            estimates=Estimates(
                cpu_watts_per_core=float(est["cpu_watts_per_core"]),
                memory_watts_per_gb=float(est["memory_watts_per_gb"]),
                gpu_watts={str(k): float(v) for k, v in est["gpu_watts"].items()},
            ),
            sources=tuple(sources),
        )

    def gpu_rate(self, name: str) -> float | None:
        """The hourly rate of a GPU by its reported name, or None when the table has none."""
        return _by_name(self.gpu_hour, name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"sources": list(self.sources)}


@dataclass(frozen=True)
class Cost:
    """What one phase cost. ``energy_source`` says, per part, whether it was measured or
    estimated and how."""

    energy_j: float
    energy_source: str
    core_hours: float
    gpu_hours: float
    money: float
    carbon_g: float
    #: money by part: "cpu", "gpu", "energy"
    money_parts: dict[str, float]
    #: GPUs that the price table has no rate for (their hours are not priced)
    unpriced_gpus: tuple[str, ...] = ()

    @property
    def estimated(self) -> bool:
        return "estimated" in self.energy_source


def cost_of(profile: Profile, table: PriceTable) -> Cost:
    """Energy, money and carbon of one measured phase under ``table``."""
    est = table.estimates
    parts: list[str] = []
    if profile.cpu_energy_j is not None:
        cpu_j = profile.cpu_energy_j
        parts.append(f"CPU measured ({profile.energy_source or 'RAPL'})")
    else:
        cpu_j = (
            profile.cpu_seconds * est.cpu_watts_per_core
            + profile.peak_rss_mb / 1024 * profile.wall_seconds * est.memory_watts_per_gb
        )
        parts.append(
            f"CPU estimated (CPU seconds × {est.cpu_watts_per_core:g} W + peak memory GB × "
            f"wall seconds × {est.memory_watts_per_gb:g} W/GB)"
        )
    gpu_j = 0.0
    per_gpu = profile.gpu_seconds / len(profile.gpus) if profile.gpus else 0.0
    if profile.gpus:
        if profile.gpu_energy_j is not None:
            gpu_j = profile.gpu_energy_j
            parts.append("GPU measured (NVML)")
        else:
            watts = [_by_name(est.gpu_watts, g) for g in profile.gpus]
            gpu_j = sum(per_gpu * (w or 0.0) for w in watts)
            parts.append("GPU estimated (held seconds × board power)")
    kwh = (cpu_j + gpu_j) / 3.6e6
    core_hours = profile.cpu_seconds / 3600
    rates = [(g, table.gpu_rate(g)) for g in profile.gpus]
    gpu_money = sum(per_gpu / 3600 * r for _, r in rates if r is not None)
    money = {
        "cpu": core_hours * table.cpu_core_hour,
        "gpu": gpu_money,
        "energy": kwh * table.pue * table.kwh,
    }
    return Cost(
        energy_j=cpu_j + gpu_j,
        energy_source="; ".join(parts),
        core_hours=core_hours,
        gpu_hours=profile.gpu_seconds / 3600,
        money=sum(money.values()),
        carbon_g=kwh * table.pue * table.grid_gco2e_per_kwh,
        money_parts=money,
        unpriced_gpus=tuple(sorted({g for g, r in rates if r is None})),
    )


def _by_name(table: dict[str, float], name: str) -> float | None:
    """The entry whose key is a word of ``name``, longest key first, case-insensitively."""
    words = name.upper().replace("-", " ").split()
    for key in sorted(table, key=len, reverse=True):
        if key.upper() in words:
            return table[key]
    return None


def _merge(
    base: dict[str, Any], over: dict[str, Any], where: str, prefix: str = ""
) -> dict[str, Any]:
    """``over`` laid on ``base``: known keys only, numbers ≥ 0 (PUE ≥ 1), tables merged."""
    merged = dict(base)
    for key, value in over.items():
        name = prefix + key
        if key not in base and prefix not in ("gpu_hour.", "estimates.gpu_watts."):
            allowed = ", ".join(sorted(prefix + k for k in base))
            raise ConfigError(f"price table {where}: unknown key '{name}'; known keys: {allowed}")
        old = base.get(key)
        if isinstance(old, dict) or (key not in base and isinstance(value, dict)):
            if not isinstance(value, dict):
                raise ConfigError(f"price table {where}: '{name}' must be a table ([{name}])")
            merged[key] = _merge(old or {}, value, where, name + ".")
        elif isinstance(old, str):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"price table {where}: '{name}' must be a non-empty string")
            merged[key] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(
                    f"price table {where}: '{name}' must be a number >= 0; got {value!r}"
                )
            if name == "pue" and value < 1:
                raise ConfigError(
                    f"price table {where}: 'pue' is facility over IT power, so >= 1; got {value}"
                )
            merged[key] = value
    return merged
