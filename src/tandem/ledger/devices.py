"""What a model would cost on hardware that is not here: its FLOPs counted from the ONNX graph,
declared device specs, and roofline estimates that say they are estimates and how they were made.

FLOPs and bytes come from :func:`tandem.ledger.flops.graph_cost`.

The device table is TOML: the defaults ship in ``devices.toml`` beside this module (each figure
with its source and date); a user's file (``path``, else ``TANDEM_DEVICES``, else
``$TANDEM_HOME/devices.toml`` when it exists) overrides the keys it names, as ``prices.toml``
does::

    inference seconds per batch = max(FLOPs / (peak × efficiency), bytes moved / bandwidth)
                                  + ai.onnx.ml steps (tree comparisons...) × host_op_ns
                                  + graph nodes × launch_us + run_overhead_us
                                  + rows × (input + output bytes) / host link   (a GPU's PCIe)

Every figure these functions return is an :class:`Estimate` (``estimated=True``) whose
``method`` spells out that formula with the numbers used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from tandem.config import Settings, layered_toml
from tandem.errors import ConfigError
from tandem.ledger.cost import PriceTable
from tandem.ledger.flops import GraphCost

__all__ = [
    "Assumptions",
    "DeviceSpec",
    "DeviceTable",
    "Estimate",
    "NoEstimate",
    "calibrate_efficiency",
    "estimate_inference",
    "estimate_training",
]

Kind = Literal["cpu", "gpu"]
Phase = Literal["inference", "training"]

_NEURAL = frozenset({"mlp"})
_NO_TRAINING_MODEL = {
    "gbdt": "no FLOPs model for training gradient-boosted trees: LightGBM's time goes to "
    "histograms and split search (rows × features × rounds), not to the comparisons the "
    "exported graph makes, and it trains on the CPU; tandem does not estimate it elsewhere",
    "linear": "no FLOPs model for training linear models: scikit-learn's solvers run on the "
    "CPU and their time depends on how fast they converge, not on the graph; tandem does not "
    "estimate it elsewhere",
}


@dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    """One device's declared figures (see ``devices.toml`` for units and sources)."""

    name: str
    kind: Kind
    fp32_tflops: float
    int8_tops: float
    memory_gb: float
    memory_gbps: float
    watts: float
    #: one-way GB/s of the link inputs and outputs cross to reach the device; 0: none (a CPU)
    host_link_gbps: float
    launch_us: float
    #: a rate in prices.toml: "cpu_core_hour" or "gpu_hour.NAME"
    price_key: str
    #: how many of that rate one hour of the device costs (vCPUs for a CPU entry)
    price_units: int

    def hourly_price(self, prices: PriceTable) -> float | None:
        """What one hour of the device costs under ``prices``; None when it has no such rate."""
        if self.price_key == "cpu_core_hour":
            rate: float | None = prices.cpu_core_hour
        else:
            rate = prices.gpu_hour.get(self.price_key.removeprefix("gpu_hour."))
        return None if rate is None else rate * self.price_units


@dataclass(frozen=True, kw_only=True)
class Assumptions:
    """Fractions of peak FLOP/s that real work reaches and costs no FLOP rate explains
    (see ``devices.toml``)."""

    cpu_inference_efficiency: float
    gpu_inference_efficiency: float
    cpu_training_efficiency: float
    gpu_training_efficiency: float
    run_overhead_us: float
    #: nanoseconds per unit of ai.onnx.ml work (a tree comparison, an encoder lookup), one thread
    host_op_ns: float

    def efficiency(self, kind: Kind, phase: Phase) -> float:
        return float(getattr(self, f"{kind}_{phase}_efficiency"))


def _number(test: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and test(v)


def _is_price_key(v: Any) -> bool:
    return v == "cpu_core_hour" or (
        isinstance(v, str) and v.startswith("gpu_hour.") and v[9:] != ""
    )


_NONNEGATIVE = "int8_tops memory_gb watts host_link_gbps launch_us run_overhead_us host_op_ns"
#: what each key of the table may hold: (in words for the error, test)
_ALLOWED: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "kind": ('"cpu" or "gpu"', lambda v: v in ("cpu", "gpu")),
    "price_key": ('"cpu_core_hour" or "gpu_hour.NAME" (a rate in prices.toml)', _is_price_key),
    "price_units": ("a whole number >= 1", lambda v: type(v) is int and v >= 1),
    "fp32_tflops": ("a number > 0", _number(lambda x: 0 < x < math.inf)),
    "memory_gbps": ("a number > 0", _number(lambda x: 0 < x < math.inf)),
    **dict.fromkeys(_NONNEGATIVE.split(), ("a number >= 0", _number(lambda x: 0 <= x < math.inf))),
    **{
        f"{kind}_{phase}_efficiency": ("a fraction > 0 and <= 1", _number(lambda x: 0 < x <= 1))
        for kind in ("cpu", "gpu")
        for phase in ("inference", "training")
    },
}


@dataclass(frozen=True, kw_only=True)
class DeviceTable:
    """Declared devices and the assumptions; :meth:`load` merges a user's file over the defaults.

    Example:
        >>> table = DeviceTable.load()
        >>> table.devices["T4"].kind, table.assumptions.efficiency("gpu", "inference") > 0
        ('gpu', True)
    """

    devices: dict[str, DeviceSpec]
    assumptions: Assumptions
    #: the files read, defaults first
    sources: tuple[str, ...]

    @classmethod
    def load(
        cls, path: str | Path | None = None, *, settings: Settings | None = None
    ) -> DeviceTable:
        """The defaults, overridden by ``path`` (else ``TANDEM_DEVICES``, else
        ``$TANDEM_HOME/devices.toml`` when it exists). A named file that is missing is an error."""
        data, sources = layered_toml(
            "tandem.ledger", "devices.toml", what="device table", env="TANDEM_DEVICES",
            path=path, settings=settings, merge=_merge,
        )  # fmt: skip
        where = sources[-1]
        devices = {
            name: DeviceSpec(name=name, **_checked(entry, DeviceSpec, where, f"device.{name}"))
            for name, entry in data["device"].items()
        }
        assumptions = Assumptions(
            **_checked(data["assumptions"], Assumptions, where, "assumptions")
        )
        return cls(devices=devices, assumptions=assumptions, sources=tuple(sources))


def _merge(base: dict[str, Any], over: dict[str, Any], where: str) -> dict[str, Any]:
    """``over`` laid on ``base``: [assumptions] key by key, each [device."NAME"] key by key."""
    for key, value in over.items():
        if key not in base:
            raise ConfigError(
                f"device table {where}: unknown key '{key}'; known: [assumptions], [device.\"NAME\"]"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"device table {where}: '{key}' must be a table ([{key}])")
    devices = dict(base["device"])
    for name, entry in over.get("device", {}).items():
        if not isinstance(entry, dict):
            raise ConfigError(
                f"device table {where}: 'device.{name}' must be a table ([device.\"{name}\"])"
            )
        devices[name] = devices.get(name, {}) | entry
    return {"assumptions": base["assumptions"] | over.get("assumptions", {}), "device": devices}


def _checked(entry: dict[str, Any], cls: type, where: str, prefix: str) -> dict[str, Any]:
    """``entry`` once every key of ``cls`` is present, known and allowed."""
    keys = [f.name for f in fields(cls) if f.name != "name"]
    unknown = sorted(set(entry) - set(keys))
    if unknown:
        raise ConfigError(
            f"device table {where}: unknown key '{prefix}.{unknown[0]}'; known keys: {', '.join(keys)}"
        )
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ConfigError(
            f"device table {where}: '{prefix}' lacks {', '.join(missing)}: a new entry must give every key (copy one from the defaults and change it)"
        )
    for key in keys:
        allowed, ok = _ALLOWED[key]
        if not ok(entry[key]):
            raise ConfigError(
                f"device table {where}: '{prefix}.{key}' must be {allowed}; got {entry[key]!r}"
            )
    # TOML writes 70 for 70.0: float fields get floats
    return {
        f.name: float(entry[f.name]) if f.type == "float" else entry[f.name]
        for f in fields(cls)
        if f.name in entry
    }


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """Seconds and watts on a device derived from declared specs: an estimate, never a
    measurement; ``method`` says how, with the numbers used.

    Inference: ``rows`` is one batch and ``seconds`` its latency (transfers and compute do not
    overlap). Training: ``rows`` is rows × epochs and ``seconds`` the whole run.
    """

    device: str
    phase: Phase
    rows: int
    seconds: float
    #: declared board power (an upper bound on the draw)
    watts: float
    method: str
    estimated: Literal[True] = True

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else math.inf

    @property
    def energy_j(self) -> float:
        return self.watts * self.seconds


@dataclass(frozen=True, kw_only=True)
class NoEstimate:
    """Why there is no estimate for this device and phase, in words for the user."""

    device: str
    phase: Phase
    reason: str


def _peak_seconds(cost: GraphCost, device: DeviceSpec, rows: float) -> float:
    """Seconds for the vector work of ``rows`` rows at full peak: int8 products at int8_tops
    where the device declares it, the rest at fp32_tflops (ai.onnx.ml work is apart)."""
    int8 = cost.int8_ops_per_row * rows if device.int8_tops > 0 else 0.0
    fp32 = (cost.flops_per_row - cost.host_ops_per_row) * rows - int8
    return fp32 / (device.fp32_tflops * 1e12) + (int8 / (device.int8_tops * 1e12) if int8 else 0)


def _fixed_seconds(cost: GraphCost, device: DeviceSpec, batch: int, a: Assumptions) -> float:
    """Seconds of one batch that no FLOP rate shortens: ai.onnx.ml work on one CPU thread,
    launches, run(), and on a GPU the inputs and outputs crossing the host link."""
    link = batch * (cost.bytes_per_row_in + cost.bytes_per_row_out)
    transfer = link / (device.host_link_gbps * 1e9) if device.host_link_gbps else 0.0
    host = batch * cost.host_ops_per_row * a.host_op_ns * 1e-9
    return host + (cost.nodes * device.launch_us + a.run_overhead_us) * 1e-6 + transfer


def _memory_seconds(cost: GraphCost, device: DeviceSpec, batch: int) -> float:
    per_row = cost.bytes_per_row_in + cost.bytes_per_row_out + cost.activation_bytes_per_row
    return (cost.weight_bytes + batch * per_row) / (device.memory_gbps * 1e9)


def estimate_inference(
    cost: GraphCost, device: DeviceSpec, *, batch: int, assumptions: Assumptions
) -> Estimate:
    """Latency of one batch of ``batch`` rows on ``device``, by the formula in the module
    docstring, at ``assumptions.efficiency(device.kind, "inference")``."""
    if batch < 1:
        raise ConfigError(f"batch must be a whole number >= 1; got {batch}")
    eff = assumptions.efficiency(device.kind, "inference")
    compute = _peak_seconds(cost, device, batch) / eff
    memory = _memory_seconds(cost, device, batch)
    seconds = max(compute, memory) + _fixed_seconds(cost, device, batch, assumptions)
    method = (
        f"per batch of {batch} rows = max(compute {_t(compute)} at {device.fp32_tflops:g} "
        f"TFLOP/s × {eff:g} efficiency, memory {_t(memory)} at {device.memory_gbps:g} GB/s)"
        f"{_host_words(cost, assumptions)} + {cost.nodes} nodes × {device.launch_us:g} µs + "
        f"{assumptions.run_overhead_us:g} µs per run{_link_words(device)} = {_t(seconds)}"
    )
    return _estimate(cost, device, "inference", batch, seconds, method)


def estimate_training(
    cost: GraphCost,
    device: DeviceSpec,
    *,
    rows: int,
    epochs: int,
    family: str,
    assumptions: Assumptions,
    batch_size: int = 256,
) -> Estimate | NoEstimate:
    """Time to train ``family`` for ``epochs`` over ``rows`` rows on ``device``, or why not.

    Neural nets only: FLOPs ≈ 3 × forward (the backward pass costs about twice the forward)
    × rows × epochs at ``assumptions.efficiency(kind, "training")``, plus 3 × the graph's
    nodes in launches per step of ``batch_size`` rows, plus on a GPU the rows crossing the
    host link every epoch. Python and framework time per step is not included.
    """
    if family not in _NEURAL:
        reason = _NO_TRAINING_MODEL.get(
            family, f"no training-cost model for family '{family}' (only for {', '.join(_NEURAL)})"
        )
        return NoEstimate(device=device.name, phase="training", reason=reason)
    if min(rows, epochs, batch_size) < 1:
        raise ConfigError(
            f"rows, epochs, batch_size must be >= 1; got {rows}, {epochs}, {batch_size}"
        )
    eff = assumptions.efficiency(device.kind, "training")
    seen, steps = rows * epochs, math.ceil(rows / batch_size) * epochs
    compute = 3 * _peak_seconds(cost, device, seen) / eff
    launches = steps * 3 * cost.nodes * device.launch_us * 1e-6
    link = (
        seen * cost.bytes_per_row_in / (device.host_link_gbps * 1e9) if device.host_link_gbps else 0
    )
    seconds = compute + launches + link
    method = (
        f"{epochs} epochs × {rows} rows = compute 3 × forward {_t(compute)} at "
        f"{device.fp32_tflops:g} TFLOP/s × {eff:g} efficiency + {steps} steps × 3 × "
        f"{cost.nodes} nodes × {device.launch_us:g} µs{_link_words(device, 'inputs every epoch')} = {_t(seconds)} "
        "(Python and framework time per step not included)"
    )
    return _estimate(cost, device, "training", seen, seconds, method)


def calibrate_efficiency(
    cost: GraphCost, device: DeviceSpec, *, batch: int, seconds: float, assumptions: Assumptions
) -> float | None:
    """The inference efficiency that makes :func:`estimate_inference` reproduce a measured
    ``seconds`` per batch of ``batch`` rows on ``device`` (capped at 1); None when the
    measurement is no slower than the model's memory and fixed costs alone, so the compute
    share cannot be told apart. Use it as
    ``replace(assumptions, **{f"{device.kind}_inference_efficiency": e})``.
    """
    left = seconds - _fixed_seconds(cost, device, batch, assumptions)
    peak = _peak_seconds(cost, device, batch)
    if peak == 0 or left <= _memory_seconds(cost, device, batch):
        return None
    return min(1.0, peak / left)


def _estimate(
    cost: GraphCost, device: DeviceSpec, phase: Phase, rows: int, seconds: float, formula: str
) -> Estimate:
    notes = [
        f"estimated from declared specs, not measured on {device.name} ({device.kind}): "
        f"{formula}; watts: board power. FLOPs counted from the ONNX graph ({cost.flops_per_row:.4g} "
        "per row): MatMul/Gemm 2·K·N, elementwise 1 per element, tree ensembles the mean leaf "
        "depth summed over trees."
    ]
    if cost.uncounted:
        notes.append(f" Not counted (taken as 0): {', '.join(cost.uncounted)}.")
    if cost.int8_ops_per_row and device.int8_tops:
        notes.append(f" int8 matrix products at {device.int8_tops:g} TOPS.")
    if device.kind == "gpu" and cost.host_ops:
        notes.append(
            f" ONNX Runtime has no CUDA kernel for {', '.join(cost.host_ops)}: they run on the "
            "host CPU, and the copies between them and the GPU are not modelled (optimistic)."
        )
    method = "".join(notes)
    return Estimate(
        device=device.name,
        phase=phase,
        rows=rows,
        seconds=seconds,
        watts=device.watts,
        method=method,
    )


def _host_words(cost: GraphCost, a: Assumptions) -> str:
    if not cost.host_ops_per_row:
        return ""
    return f" + {cost.host_ops_per_row:.4g} tree/encoder steps per row × {a.host_op_ns:g} ns on one CPU thread"


def _link_words(device: DeviceSpec, what: str = "inputs and outputs") -> str:
    if not device.host_link_gbps:
        return ""
    return f" + {what} over a {device.host_link_gbps:g} GB/s host link"


def _t(seconds: float) -> str:
    """Seconds for people: '12.3 µs', '4.5 ms', '2.1 s'."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"
