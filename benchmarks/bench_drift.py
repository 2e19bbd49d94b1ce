"""Drift: false alarms, detection, and the cost of a check against Evidently's DataDriftPreset.

    PYTHONPATH=src python benchmarks/bench_drift.py [--quick] [--evidently-python PATH]

~11 min (a third of it Evidently's one 1M-row run); --quick ~1-2 min.

20 columns: 15 numbers (normal, skewed, integer-valued; four with missing values) and
5 categories (2 to 200 levels; one with missing values). tandem's check is
``drift(profile_columns(specs, reference), current)``: the reference is reduced once to the
statistics a Bundle stores, and monitoring checks the current rows against them.

(a) **False alarms** (goal ≤ 5 % at the dataset level): 100 clean pairs of a 100k-row
    reference and a 100k-row current sample, each pair drawn afresh.
(b) **Detection** (goal ≥ 95 %, the shifted column named): 40 pairs per shift, 100k rows
    each: a mean shift of +0.2 sd, a scale of ×1.3 around the mean, a re-weighted category.
(c) **Cost** (goal ≥ 10× faster than Evidently): 1M rows × 20 columns from Parquet. Each side
    runs in its own fresh process, so that its peak memory (``VmHWM``) is its own: profiling
    the reference once, the check of the current rows against the stored statistics (read and
    coerced as ``tandem monitor`` does; the check that monitoring repeats), and Evidently's
    ``DataDriftPreset`` on the same two files. The current rows carry all three shifts; the
    per-column verdicts of both are compared.

Evidently runs under its own interpreter (``--evidently-python``, else
``$TANDEM_EVIDENTLY_PYTHON``, else this one if it imports evidently), in a separate
environment because it fails to import under pandas 3. It takes 20-30 s a 100k-row pair
and 3 min at 1M rows here, so it checks a subset of (a) and (b) (4 clean pairs, 2 per shift;
in its own process beside ours: nothing there is timed) and one round of (c).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, markdown_table, median, text_table, write_json

ROOT = Path(__file__).resolve().parents[1]
EVIDENTLY_PIP = (
    "python3 -m venv /tmp/evvenv && /tmp/evvenv/bin/pip install 'evidently==0.7.23' "
    "'pandas<3' pyarrow"
)

# -- data ---------------------------------------------------------------------------------------

Draw = Callable[[np.random.Generator, int], np.ndarray]


def _zipf(k: int) -> np.ndarray:
    p = 1 / np.arange(1, k + 1) ** 1.1
    return p / p.sum()


#: name: (draw, missing rate)
NUMBERS: dict[str, tuple[Draw, float]] = {
    "normal_a": (lambda rng, n: rng.normal(0, 1, n), 0.0),
    "normal_b": (lambda rng, n: rng.normal(50, 10, n), 0.02),
    "normal_c": (lambda rng, n: rng.normal(-3, 0.5, n), 0.0),
    "normal_d": (lambda rng, n: rng.normal(1000, 200, n), 0.10),
    "normal_e": (lambda rng, n: rng.normal(0, 1e-3, n), 0.0),
    "lognormal_a": (lambda rng, n: rng.lognormal(0, 0.25, n), 0.0),
    "lognormal_b": (lambda rng, n: rng.lognormal(0, 0.5, n), 0.05),
    "lognormal_c": (lambda rng, n: rng.lognormal(0, 1, n), 0.0),
    "lognormal_d": (lambda rng, n: rng.lognormal(3, 1.5, n), 0.0),
    "exponential": (lambda rng, n: rng.exponential(2, n), 0.0),
    "count_a": (lambda rng, n: rng.poisson(3, n), 0.01),
    "count_b": (lambda rng, n: rng.poisson(40, n), 0.0),
    "count_c": (lambda rng, n: rng.binomial(4, 0.3, n), 0.0),  # 5 values
    "count_d": (lambda rng, n: rng.integers(0, 100, n), 0.0),
    "count_e": (lambda rng, n: rng.geometric(0.2, n), 0.0),
}
CITIES = np.array(["paris", "lyon", "nice", "lille", "brest"])
#: name: (levels, probabilities, missing rate)
CATEGORIES: dict[str, tuple[np.ndarray, np.ndarray, float]] = {
    "city": (CITIES, np.array([0.4, 0.25, 0.15, 0.12, 0.08]), 0.0),
    "flag": (np.array(["no", "yes"]), np.array([0.7, 0.3]), 0.0),
    "plan": (np.array([f"plan_{i:02d}" for i in range(12)]), _zipf(12), 0.0),
    # more levels than the reference keeps by name: the rest are pooled
    "product": (np.array([f"sku_{i:03d}" for i in range(200)]), _zipf(200), 0.0),
    "channel": (np.array(["web", "app", "store", "phone"]), np.array([0.5, 0.3, 0.15, 0.05]), 0.03),
}
#: name: (column, what it does to the column's values)
SHIFTS: dict[str, tuple[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]]] = {
    "mean +0.2 sd": ("normal_b", lambda rng, x: x + 0.2 * 10),
    "scale ×1.3": ("normal_c", lambda rng, x: -3 + (x + 3) * 1.3),
    "re-weighted category": (
        "city",
        lambda rng, x: rng.choice(CITIES, size=x.size, p=[0.3, 0.3, 0.2, 0.12, 0.08]),
    ),
}
CLEAN = "no drift"
SCENARIOS = [CLEAN, *SHIFTS]


def sample(rng: np.random.Generator, n: int, shifts: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """n rows: float64 arrays (NaN = missing) and str arrays ("" = missing), with ``shifts``
    (names in :data:`SHIFTS`) applied."""
    cols: dict[str, np.ndarray] = {}
    for name, (draw, missing) in NUMBERS.items():
        x = draw(rng, n).astype(float)
        x[rng.random(n) < missing] = np.nan
        cols[name] = x
    for name, (levels, p, missing) in CATEGORIES.items():
        x = rng.choice(levels, size=n, p=p)
        x[rng.random(n) < missing] = ""
        cols[name] = x
    for shift in shifts:
        column, apply = SHIFTS[shift]
        cols[column] = apply(rng, cols[column])
    return cols


def specs() -> list[Any]:
    from tandem.data.schema import ColumnSpec

    return [
        *(ColumnSpec(name=n, kind="numeric") for n in NUMBERS),
        *(ColumnSpec(name=n, kind="categorical") for n in CATEGORIES),
    ]


def write_parquet(path: Path, cols: dict[str, np.ndarray]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    masks = {n: np.isnan(x) if x.dtype.kind == "f" else x == "" for n, x in cols.items()}
    pq.write_table(pa.table({n: pa.array(x, mask=masks[n]) for n, x in cols.items()}), path)
    return path


def draw_pair(scenario: str, trial: int, rows: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reference and current sample of one trial: the same for every caller."""
    rng = np.random.default_rng([SCENARIOS.index(scenario), trial])
    reference = sample(rng, rows)
    return reference, sample(rng, rows, () if scenario == CLEAN else (scenario,))


# -- the measured sides, each a fresh process in (c) --------------------------------------------


def _memory_mib(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` of this process. Not getrusage's maxrss, which a child
    inherits from its parent across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _ours(report: Any) -> dict[str, Any]:
    return {
        c.column: {"statistic": c.statistic, "threshold": c.threshold, "method": c.magnitude,
                   "drifted": c.drifted}
        for c in report.columns
    }  # fmt: skip


class Laps:
    """Seconds between successive calls, by name: ``laps("read_s")`` ends the lap "read_s"."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self._last = now - self._last, now


def _read_columns(path: str) -> dict[str, np.ndarray]:
    """The rows of a Parquet file read and coerced as ``tandem monitor`` does."""
    from tandem.data.readers import read_table
    from tandem.data.schema import coerce_column

    table = read_table(path)
    return {s.name: coerce_column(s, table.column(s.name)) for s in specs()}


def child_profile(reference_path: str, out_path: str) -> dict[str, Any]:
    """Read the reference, reduce it to the statistics a Bundle stores, write them as JSON."""
    laps = Laps()
    import tandem.data.readers  # noqa: F401
    from tandem.data.profile import profile_columns

    laps("import_s")
    base = _memory_mib("VmRSS")
    columns = _read_columns(reference_path)
    laps("read_s")
    reference = profile_columns(specs(), columns)
    laps("compute_s")
    Path(out_path).write_text(json.dumps(reference))
    return {**laps.seconds, "base_mib": base, "peak_mib": _memory_mib("VmHWM"),
            "stats_bytes": Path(out_path).stat().st_size}  # fmt: skip


def child_check(stats_path: str, current_path: str) -> dict[str, Any]:
    """The check against the stored statistics: read and coerce the current rows, ``drift``."""
    laps = Laps()
    import scipy.stats  # noqa: F401  (drift imports it on first use: an import, not the check)

    import tandem.data.readers  # noqa: F401
    from tandem.monitoring.drift import drift

    laps("import_s")
    base = _memory_mib("VmRSS")
    reference = json.loads(Path(stats_path).read_text())
    columns = _read_columns(current_path)
    laps("read_s")
    report = drift(reference, columns)
    laps("compute_s")
    return {**laps.seconds, "base_mib": base, "peak_mib": _memory_mib("VmHWM"),
            "columns": _ours(report)}  # fmt: skip


def child_evidently(*paths: str) -> list[dict[str, Any]]:
    """Evidently's DataDriftPreset on each (reference, current) pair of Parquet files."""
    laps = Laps()
    import evidently
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    laps("import_s")
    imported, base = laps.seconds, _memory_mib("VmRSS")
    definition = DataDefinition(
        numerical_columns=list(NUMBERS), categorical_columns=list(CATEGORIES)
    )
    results = []
    for ref_path, cur_path in zip(paths[::2], paths[1::2], strict=True):
        laps = Laps()
        ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
        laps("read_s")
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
        laps("compute_s")
        results.append({**imported, **laps.seconds, "base_mib": base, "peak_mib": _memory_mib("VmHWM"),
                        "version": evidently.__version__,
                        "columns": _evidently_columns(snapshot.dict())})  # fmt: skip
        del ref, cur, snapshot
    return results


def _evidently_columns(snapshot: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if not config["type"].endswith(":ValueDrift"):
            continue
        value, threshold = float(metric["value"]), float(config["threshold"])
        # the preset picks a distance (drift at or over the threshold) for > 1000 rows; a
        # p-value method (K-S, chi-square, Z) drifts under it
        drifted = value < threshold if "p_value" in config["method"] else value >= threshold
        out[config["column"]] = {"statistic": value, "threshold": threshold,
                                 "method": config["method"], "drifted": drifted}  # fmt: skip
    return out


CHILDREN: dict[str, Callable[..., Any]] = {
    "profile": child_profile,
    "check": child_check,
    "evidently": child_evidently,
}


def spawn(python: str, child: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    return subprocess.Popen(
        [python, str(Path(__file__).resolve()), "--child", child, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def collect(proc: subprocess.Popen[str]) -> Any:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def find_evidently(given: str | None) -> tuple[str | None, str | None]:
    """(interpreter, evidently version), or (None, why not)."""
    candidate = given or os.environ.get("TANDEM_EVIDENTLY_PYTHON") or sys.executable
    try:
        done = subprocess.run(
            [candidate, "-c", "import evidently; print(evidently.__version__)"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except OSError as exc:
        return None, f"{candidate}: {exc}"
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no message"]
        return None, f"{candidate} cannot import evidently: {last[0]}"
    return candidate, done.stdout.strip()


# -- (a), (b): false alarms and detection ------------------------------------------------------


def quality(trials: dict[str, int], ev_trials: dict[str, int], rows: int,
            evidently: str | None, tmp: Path) -> dict[str, Any]:  # fmt: skip
    """Per scenario, per trial: the columns each side names, and every column's magnitude.
    Evidently's subset (the first trials of each scenario) runs in its own process beside
    ours: nothing here is timed."""
    from tandem.data.profile import profile_columns
    from tandem.monitoring.drift import drift

    paths = []
    for s in SCENARIOS:
        for i in range(ev_trials[s] if evidently else 0):
            ref, cur = draw_pair(s, i, rows)
            paths += [str(write_parquet(tmp / f"{s}-{i}-{kind}.parquet", cols))
                      for kind, cols in (("ref", ref), ("cur", cur))]  # fmt: skip
    proc = spawn(evidently, "evidently", *paths) if evidently and paths else None
    ours: dict[str, list[Any]] = {s: [] for s in SCENARIOS}
    for s in SCENARIOS:
        started = time.perf_counter()
        for i in range(trials[s]):
            ref, cur = draw_pair(s, i, rows)
            ours[s].append(_ours(drift(profile_columns(specs(), ref), cur)))
        print(f"{s}: {trials[s]} pairs in {time.perf_counter() - started:.0f} s", flush=True)
    theirs: dict[str, list[Any]] = {s: [] for s in SCENARIOS}
    if proc is not None:
        results = iter(collect(proc))
        for s in SCENARIOS:
            theirs[s] = [next(results)["columns"] for _ in range(ev_trials[s])]
    return {"ours": ours, "evidently": theirs}


def _named(trial: dict[str, Any]) -> list[str]:
    return [c for c, v in trial.items() if v["drifted"]]


def _evidently_dataset(trial: dict[str, Any]) -> bool:
    """The preset's dataset verdict: drift when at least ``drift_share`` (0.5) of the columns do."""
    return len(_named(trial)) >= 0.5 * len(trial)


def false_alarm_rows(q: dict[str, Any]) -> list[list[Any]]:
    rows = []
    rules: list[tuple[str, str, Callable[[dict[str, Any]], bool]]] = [
        ("tandem", "any column drifts", lambda t: bool(_named(t))),
        ("Evidently", "preset: ≥ 50 % of columns", _evidently_dataset),
        ("Evidently", "any column drifts", lambda t: bool(_named(t))),
    ]
    for tool, rule, alarm in rules:
        trials = q["ours" if tool == "tandem" else "evidently"][CLEAN]
        if not trials:
            continue
        alarms = sum(alarm(t) for t in trials)
        columns = Counter(c for t in trials for c in _named(t))
        rows.append([tool, rule, len(trials), alarms, f"{alarms / len(trials):.1%}",
                     ", ".join(f"{c} ×{k}" for c, k in columns.most_common()) or "-"])  # fmt: skip
    return rows


def detection_rows(q: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for shift, (column, _) in SHIFTS.items():
        for tool, key in (("tandem", "ours"), ("Evidently", "evidently")):
            trials = q[key][shift]
            if not trials:
                continue
            found = sum(column in _named(t) for t in trials)
            others = Counter(c for t in trials for c in _named(t) if c != column)
            dataset = sum(bool(_named(t)) if tool == "tandem" else _evidently_dataset(t)
                          for t in trials)  # fmt: skip
            stat = median([t[column]["statistic"] for t in trials])
            rows.append([shift, tool, len(trials), f"{found} ({found / len(trials):.0%})",
                         sum(bool(set(_named(t)) - {column}) for t in trials),
                         ", ".join(f"{c} ×{k}" for c, k in others.most_common()) or "-",
                         f"{dataset / len(trials):.0%}",
                         f"{stat:.3f} / {trials[0][column]['threshold']:g} ({trials[0][column]['method']})"])  # fmt: skip
    return rows


def agreement(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> Counter[str]:
    """Per column and trial: both drift, tandem only, Evidently only, neither."""
    counts: Counter[str] = Counter()
    for ours, theirs in pairs:
        for column, v in ours.items():
            a, b = v["drifted"], theirs[column]["drifted"]
            counts["both" if a and b else "tandem only" if a else "Evidently only" if b else "neither"] += 1  # fmt: skip
    return counts


# -- (c): cost at 1M rows -----------------------------------------------------------------------


def cost(rows: int, rounds: int, evidently: str | None, tmp: Path) -> dict[str, Any]:
    """Our two steps ``rounds`` times, Evidently once (minutes a run at 1M rows), each in a
    fresh process, one at a time."""
    rng = np.random.default_rng(12345)
    ref_path = write_parquet(tmp / "reference.parquet", sample(rng, rows))
    cur_path = write_parquet(tmp / "current.parquet", sample(rng, rows, tuple(SHIFTS)))
    stats = tmp / "reference-stats.json"
    runs: dict[str, list[Any]] = {"profile": [], "check": [], "evidently": []}
    for r in range(rounds):
        runs["profile"].append(collect(spawn(sys.executable, "profile", str(ref_path), str(stats))))
        runs["check"].append(collect(spawn(sys.executable, "check", str(stats), str(cur_path))))
        if evidently and r == 0:
            ev = collect(spawn(evidently, "evidently", str(ref_path), str(cur_path)))
            runs["evidently"].append(ev[0])
        print(f"(c) round {r + 1}: profile {runs['profile'][-1]['compute_s']:.2f} s, check "
              f"{runs['check'][-1]['compute_s']:.2f} s"
              + (f", Evidently {runs['evidently'][-1]['compute_s']:.1f} s" if evidently and r == 0 else ""),
              flush=True)  # fmt: skip
    return {"rows": rows, "parquet_mib": {"reference": ref_path.stat().st_size / 2**20,
                                          "current": cur_path.stat().st_size / 2**20}, **runs}  # fmt: skip


COST_HEADERS = ["what", "runs", "import s", "read s", "compute s", "read + compute s",
                "peak MiB", "peak − imports MiB"]  # fmt: skip


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("import_s", "read_s", "compute_s", "base_mib", "peak_mib")
    return {k: median([r[k] for r in runs]) for k in keys}


def cost_rows(c: dict[str, Any]) -> tuple[list[list[Any]], dict[str, float]]:
    sides = {"tandem: profile the reference (once)": c["profile"],
             "tandem: check current vs stored statistics": c["check"],
             "Evidently DataDriftPreset (reference + current)": c["evidently"]}  # fmt: skip
    rows, s = [], {}
    for name, runs in sides.items():
        if not runs:
            continue
        m = s[name] = _summary(runs)
        rows.append([name, len(runs), f"{m['import_s']:.2f}", f"{m['read_s']:.2f}", f"{m['compute_s']:.2f}",
                     f"{m['read_s'] + m['compute_s']:.2f}", f"{m['peak_mib']:.0f}",
                     f"{m['peak_mib'] - m['base_mib']:.0f}"])  # fmt: skip
    ratios: dict[str, float] = {}
    if c["evidently"]:
        p, k, e = (s[n] for n in sides)
        ratios = {
            "compute: Evidently / check": e["compute_s"] / k["compute_s"],
            "compute: Evidently / (profile + check)": e["compute_s"] / (p["compute_s"] + k["compute_s"]),
            "read + compute: Evidently / check": (e["read_s"] + e["compute_s"]) / (k["read_s"] + k["compute_s"]),
            "peak memory: Evidently / check": e["peak_mib"] / k["peak_mib"],
            "peak memory: Evidently / profile": e["peak_mib"] / p["peak_mib"],
        }  # fmt: skip
    return rows, ratios


def verdict_rows(c: dict[str, Any]) -> list[list[Any]]:
    ours = c["check"][0]["columns"]
    theirs = c["evidently"][0]["columns"] if c["evidently"] else {}
    shifted = {column: shift for shift, (column, _) in SHIFTS.items()}
    rows = []
    for column, v in ours.items():
        row = [column, shifted.get(column, "-"), f"{v['statistic']:.4f} / {v['threshold']:g}",
               "drift" if v["drifted"] else "-"]  # fmt: skip
        t = theirs.get(column)
        row += ([t["method"], f"{t['statistic']:.4f} / {t['threshold']:g}",
                 "drift" if t["drifted"] else "-", "yes" if t["drifted"] == v["drifted"] else "NO"]
                if t else ["not measured", "", "", ""])  # fmt: skip
        rows.append(row)
    return rows


# -- main ---------------------------------------------------------------------------------------


def report(q: dict[str, Any], c: dict[str, Any], evidently: tuple[str | None, str | None]) -> dict[str, Any]:  # fmt: skip
    python, version = evidently
    print(f"\nbaseline: Evidently {version} ({python})" if python else
          f"\nbaseline NOT measured: {version}\n  to measure it: {EVIDENTLY_PIP}\n"
          "  then: --evidently-python /tmp/evvenv/bin/python (or TANDEM_EVIDENTLY_PYTHON)")  # fmt: skip
    alarms = false_alarm_rows(q)
    print("\n(a) false alarms on clean samples (goal ≤ 5 % at the dataset level)")
    print(text_table(["tool", "dataset verdict", "samples", "alarms", "rate", "columns named"], alarms))  # fmt: skip
    detect = detection_rows(q)
    print("\n(b) detection (goal ≥ 95 %, the shifted column named)")
    print(text_table(["shift", "tool", "samples", "shifted column named", "samples naming others",
                      "other columns named", "dataset verdict: drift (Evidently: ≥ 50 %)", "median magnitude / threshold"], detect))  # fmt: skip
    paired = [(o, t) for s in SCENARIOS for o, t in zip(q["ours"][s], q["evidently"][s], strict=False)]  # fmt: skip
    agree = agreement(paired)
    if paired:
        print(f"\nper-column verdicts on the {len(paired)} pairs both checked (rows: tandem)")
        print(text_table(["", "Evidently: drift", "Evidently: no drift"],
                         [["drift", agree["both"], agree["tandem only"]],
                          ["no drift", agree["Evidently only"], agree["neither"]]]))  # fmt: skip
    cost_table, ratios = cost_rows(c)
    print(f"\n(c) {c['rows']:,} rows × 20 columns from Parquet ({c['parquet_mib']['reference']:.0f} + "
          f"{c['parquet_mib']['current']:.0f} MiB); medians; each side a fresh process (goal ≥ 10× faster)")  # fmt: skip
    print(text_table(COST_HEADERS, cost_table))
    for name, value in ratios.items():
        print(f"  {name}: {value:.1f}×")
    verdicts = verdict_rows(c)
    print("\n(c) per-column verdicts on the current rows with all three shifts")
    print(text_table(["column", "shift", "tandem magnitude / threshold", "tandem", "Evidently method",
                      "Evidently value / threshold", "Evidently", "agree"], verdicts))  # fmt: skip
    print("\n" + markdown_table(COST_HEADERS, cost_table))
    return {"false_alarms": alarms, "detection": detect, "agreement": dict(agree),
            "cost_table": cost_table, "ratios": ratios, "verdicts": verdicts}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples; 100k rows in (c)")
    parser.add_argument("--evidently-python", help="an interpreter that imports evidently")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](*args.paths)))
        return
    evidently = find_evidently(args.evidently_python)
    python = evidently[0]
    # Evidently takes 20-30 s a 100k-row pair here: it checks a subset of (a) and (b), and
    # none in --quick (its verdicts on the three shifts are still compared in (c))
    if args.quick:
        trials = {CLEAN: 8, **dict.fromkeys(SHIFTS, 2)}
        ev_trials = dict.fromkeys(SCENARIOS, 0)
    else:
        trials = {CLEAN: 100, **dict.fromkeys(SHIFTS, 40)}
        ev_trials = {CLEAN: 4, **dict.fromkeys(SHIFTS, 2)}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-drift-") as tmp:
        q = quality(trials, ev_trials, 100_000, python, Path(tmp))
        c = cost(100_000 if args.quick else 1_000_000, 2 if args.quick else 3, python, Path(tmp))
    results = report(q, c, evidently)
    payload = {"machine": machine(), "evidently": {"python": python, "version": evidently[1]},
               "trials": trials, "evidently_trials": ev_trials, "quality": q, "cost": c,
               **results}  # fmt: skip
    print(f"\nwrote {write_json('bench_drift', payload)}")


if __name__ == "__main__":
    main()
