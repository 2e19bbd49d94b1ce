"""``tandem advise``: the sweep's rules as properties, and the command against real
``tandem serve`` processes under real load."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem import Registry, Settings
from tandem.ledger.advise import (
    GAIN,
    TOLERANCE,
    Config,
    Phase,
    Point,
    _chain,
    cheapest,
    confirm,
    optimized_variants,
    pareto,
    settled,
    sweep,
)
from tandem.ledger.meter import Profile
from tests.helpers import TANDEM, cli_env


def phase(goodput: float, p99: float | None = 1.0, cores: float = 0.5, failed: int = 0) -> Phase:
    return Phase(
        windows=3, stable=True, goodput=goodput, p50_ms=p99, p99_ms=p99, cores=cores,
        client_cores=0.1, ok=int(goodput * 3), failed=failed, profile=Profile(3.0, cores * 3, 1.0),
    )  # fmt: skip


# --- the stability rule --------------------------------------------------------------------


@given(st.floats(0.01, 1e6), st.floats(0.01, 100))
def test_windows_that_agree_settle_whatever_the_scale(x: float, scale: float) -> None:
    assert settled([x * 5, x, x * (1 + TOLERANCE / 2), x])
    assert settled([x, x * 1.04, x]) == settled([x * scale, x * 1.04 * scale, x * scale])


@given(st.lists(st.floats(0.1, 1e4), min_size=3, max_size=8))
def test_settled_means_the_last_three_within_ten_percent(values: list[float]) -> None:
    last = values[-3:]
    assert settled(values) == (max(last) - min(last) <= TOLERANCE * max(last))
    assert not settled(values[-2:])  # fewer than three windows never settle


def test_a_coarse_clock_is_not_mistaken_for_noise() -> None:
    # 0.03 cores in 1 s windows at 100 ticks/s: one tick is a third of the figure
    assert not settled([0.03, 0.04, 0.03])
    assert settled([0.03, 0.04, 0.03], floor=0.02)


# --- the sweep -----------------------------------------------------------------------------

GRID = {"variant": ["fp32"], "threads": [1, 2, 4], "max_batch": [0, 8, 32, 128],
        "processes": [1, 2, 4]}  # fmt: skip
ALL = [
    Config("fp32", t, b, p)
    for t in GRID["threads"]
    for b in GRID["max_batch"]
    for p in GRID["processes"]
]


@given(st.lists(st.floats(1, 1e4), min_size=len(ALL), max_size=len(ALL)))
def test_the_sweep_walks_each_dimension_until_a_step_gains_under_five_percent(
    capacities: list[float],
) -> None:
    table = dict(zip(ALL, capacities, strict=True))
    measured: list[Config] = []

    def measure(c: Config) -> Point:
        measured.append(c)
        return Point(c, phase(table[c]), phase(100.0), 100.0, 10.0)

    points = sweep(measure, GRID)
    assert measured[0] == Config()  # the defaults first
    assert len(measured) == len(set(measured)) == len(points)  # each once
    for i, c in enumerate(measured[1:], 1):  # one dimension at a time
        assert any(_differ(c, o) == 1 for o in measured[:i])
    # the last walk (processes): up its chain from the first value, every other setting held,
    # going on while each step gains >= 5% and stopping after the first that does not
    last = measured[-1]
    chain = sorted(_chain("processes", GRID["processes"]))
    walk = [c for c in measured if replace(c, processes=last.processes) == last]
    values = [c.processes for c in walk]
    assert values == chain[: len(values)]
    steps = [table[c] for c in walk]
    for i in range(1, len(steps)):
        gained = steps[i] >= (1 + GAIN) * steps[i - 1]
        assert gained or i == len(steps) - 1, "the walk went on after a small gain"
    if len(values) < len(chain):
        assert len(steps) >= 2 and steps[-1] < (1 + GAIN) * steps[-2], "stopped after a gain"


def test_each_walk_starts_from_the_best_of_the_last() -> None:
    # 2 threads is best; the batch walk must hold 2 threads, and the process walk its best batch
    capacity = {Config(): 100.0, Config(threads=2): 200.0, Config(threads=4): 150.0}
    capacity |= {
        Config(threads=2, max_batch=b): c for b, c in ((8, 150.0), (32, 300.0), (128, 290.0))
    }
    capacity |= {
        Config(threads=2, max_batch=32, processes=n): c for n, c in ((2, 500.0), (4, 480.0))
    }
    measured: list[Config] = []

    def measure(c: Config) -> Point:
        measured.append(c)
        return Point(c, phase(capacity[c]), phase(100.0), 100.0, 10.0)

    sweep(measure, GRID)
    assert measured == [
        Config(), Config(threads=2), Config(threads=4),
        Config(threads=2, max_batch=8), Config(threads=2, max_batch=32),
        Config(threads=2, max_batch=128),
        Config(threads=2, max_batch=32, processes=2), Config(threads=2, max_batch=32, processes=4),
    ]  # fmt: skip


def test_every_variant_is_tried_and_the_best_goes_on() -> None:
    # int8 gains under 5 % over fp32, yet the pruned variant after it is tried, and wins
    capacity = {Config(): 100.0, Config("int8-dynamic"): 102.0, Config("prune 50%"): 300.0,
                Config("prune 50%", threads=2): 310.0}  # fmt: skip
    measured: list[Config] = []

    def measure(c: Config) -> Point:
        measured.append(c)
        return Point(c, phase(capacity[c]), phase(100.0), 100.0, 10.0)

    grid = {"variant": ["fp32", "int8-dynamic", "prune 50%"], "threads": [1, 2]}
    sweep(measure, grid)
    assert measured == [Config(), Config("int8-dynamic"), Config("prune 50%"),
                        Config("prune 50%", threads=2)]  # fmt: skip


def _differ(a: Config, b: Config) -> int:
    return sum(x != y for x, y in zip(vars(a).values(), vars(b).values(), strict=True))


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


@given(st.lists(st.tuples(st.floats(1, 1e4), st.floats(0.1, 100), st.floats(0.001, 1)),
                min_size=1, max_size=12))  # fmt: skip
def test_the_pareto_front_is_exactly_the_undominated(
    rows: list[tuple[float, float, float]],
) -> None:
    points = [
        replace(
            Point(Config(threads=i + 1), phase(cap), phase(10, p99), 10, 50), cost_per_million=c
        )
        for i, (cap, p99, c) in enumerate(rows)
    ]
    keys = [(-cap, p99, c) for cap, p99, c in rows]
    front = pareto(points)
    for i, k in enumerate(keys):
        dominated = any(_dominates(o, k) for o in keys)
        assert (i in front) == (not dominated)


def test_the_cheapest_that_meets_the_objective_is_chosen() -> None:
    ok = replace(Point(Config(), phase(500), phase(100, 8.0), 100, 10), cost_per_million=0.02)
    cheaper_but_slow = replace(
        Point(Config(threads=2), phase(600), phase(100, 12.0), 100, 10), cost_per_million=0.01
    )
    failing = replace(
        Point(Config(processes=2), phase(900), phase(100, 2.0, failed=3), 100, 10),
        cost_per_million=0.001,
    )
    too_small = Point(Config(max_batch=8), phase(50), None, 100, 10)
    assert cheapest([ok, cheaper_but_slow, failing, too_small]) is ok
    assert not cheaper_but_slow.meets and "over 10 ms" in cheaper_but_slow.why_not
    assert not failing.meets and "3 requests failed" in failing.why_not
    assert "below 100/s" in too_small.why_not
    assert cheapest([cheaper_but_slow, too_small]) is None
    # within 5% is a tie, which the configuration reserving fewer cores wins
    near = replace(
        Point(Config(threads=2), phase(600), phase(100, 3.0), 100, 10), cost_per_million=0.0195
    )
    assert cheapest([ok, near]) is ok
    clearly = replace(near, cost_per_million=0.015)
    assert cheapest([ok, clearly]) is clearly


def test_finalists_are_measured_again_and_a_lucky_one_loses() -> None:
    # the sweep saw "lucky" cheap; measured again it misses the objective once: out. The
    # defaults are always among the finalists, and keep their median measurement.
    seen = {
        Config(): [0.020, 0.022, 0.018],
        Config(threads=2): [0.010, 0.030, 0.031],
        Config(processes=2): [0.050],
    }
    misses = {(Config(threads=2), 2)}
    calls: dict[Config, int] = {}

    def measure(c: Config) -> Point:
        i = calls[c] = calls.get(c, 0) + 1
        p99 = 99.0 if (c, i) in misses else 5.0
        return replace(Point(c, phase(500), phase(100, p99), 100, 10), cost_per_million=seen[c][i])

    first = [replace(Point(c, phase(500), phase(100, 5.0), 100, 10), cost_per_million=v[0])
             for c, v in seen.items()]  # fmt: skip
    confirmed = confirm(measure, first, rounds=2)
    by = {p.config: p for p in confirmed}
    assert calls == {Config(threads=2): 2, Config(): 2}  # too dear to be a finalist: not again
    assert by[Config()].rounds == 3 and by[Config()].cost_per_million == 0.020  # the median
    assert not by[Config(threads=2)].meets and "2 of 3 rounds" in by[Config(threads=2)].why_not
    assert cheapest(confirmed) is by[Config()]
    assert confirm(measure, first, rounds=0) == first


def test_a_point_measured_once_is_confirmed_before_it_is_recommended() -> None:
    # the finalists (within 25 % of the least) came out dearer on a second look than two points
    # the sweep saw once at 1.3x the least: each is measured again before it may be chosen
    seen = {
        Config(): [0.010, 0.020, 0.021],
        Config(threads=2): [0.011, 0.022, 0.023],
        Config(processes=2): [0.013, 0.030, 0.031],
        Config(max_batch=8): [0.0135, 0.024, 0.025],
    }
    calls: dict[Config, int] = {}

    def measure(c: Config) -> Point:
        i = calls[c] = calls.get(c, 0) + 1
        return replace(Point(c, phase(500), phase(100, 5.0), 100, 10), cost_per_million=seen[c][i])

    first = [replace(Point(c, phase(500), phase(100, 5.0), 100, 10), cost_per_million=v[0])
             for c, v in seen.items()]  # fmt: skip
    confirmed = confirm(measure, first, rounds=2)
    by = {p.config: p for p in confirmed}
    # two finalists, then each of the other two once it looked cheapest on its one measurement
    assert calls == {c: 2 for c in seen}
    best = cheapest(confirmed)
    assert best is by[Config()] and best.rounds == 3 and best.cost_per_million == 0.020
    assert by[Config(max_batch=8)].rounds == by[Config(processes=2)].rounds == 3


# --- the command, for real -----------------------------------------------------------------


def advise_cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # wide enough that table cells are not wrapped mid-phrase
    return subprocess.run(
        [*TANDEM, "advise", *args], env=cli_env(home) | {"COLUMNS": "300"}, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def _serving_processes(home: Path) -> list[int]:
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            mine = f"TANDEM_HOME={home}".encode() in environ.read_bytes().split(b"\0")
            command = (environ.parent / "cmdline").read_bytes()
            if mine and (b"serve" in command or b"tandem.serving" in command):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_advise_measures_real_servers_and_recommends_the_cheapest(models_home: Path) -> None:
    done = advise_cli(
        models_home, "num:1", "--p99-ms", "250", "--rps", "40", "--threads", "1",
        "--max-batch", "0", "--processes", "1,2", "--window-s", "0.4", "--max-windows", "8",
        "--confirm-rounds", "1", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    advice = json.loads(done.stdout)
    labels = [p["label"] for p in advice["points"]]
    assert labels[0] == Config().label and len(labels) == len(set(labels)) >= 1
    for p in advice["points"]:
        assert p["capacity"]["goodput"] > 40 and p["capacity"]["windows"] >= 3
        target = p["target"]
        assert target is not None and target["ok"] > 0
        # the open loop held the rate, and the server's CPU was really read from /proc
        assert target["goodput"] == pytest.approx(40, rel=0.25)
        assert 0 < target["cores"] < 4
        assert p["cost_per_million"] > 0 and p["joules_per_prediction"] > 0
    best = advice["points"][advice["best"]]
    # the defaults met the objective, so they were measured again with the finalists
    assert advice["points"][0]["rounds"] == 2 and best["rounds"] == 2
    assert best["meets"] and best["target"]["p99_ms"] <= 250
    least = min(p["cost_per_million"] for p in advice["points"] if p["meets"])
    assert least <= best["cost_per_million"] <= (1 + GAIN) * least
    assert advice["pareto"]
    # hardware: this machine measured, every declared GPU estimated and labelled so
    inference = advice["hardware"]["inference"]["options"]
    assert inference[0]["estimated"] is False
    assert {o["device"] for o in inference if o["estimated"]} >= {"T4", "H100"}
    training = advice["hardware"]["training"]["options"]
    assert training[0]["estimated"] is False and training[0]["seconds"] > 0
    gpu_fits = [o for o in training if o["estimated"]]
    assert gpu_fits and all(o["seconds"] > 0 and "estimated" in o["how"] for o in gpu_fits)
    assert advice["hardware"]["flops_per_row"] > 0
    # nothing left running, and the synthetic load is not booked as the model's serving
    assert _serving_processes(models_home) == []
    with Registry(Settings(home=models_home)) as reg:
        assert reg.runs("num", 1, phase="serve") == []


def _register_optimized(home: Path, ref: str, technique: str) -> str:
    """A version registered as ``tandem optimize`` would, from ``ref`` (same graph: what is
    tested here is which version each variant serves)."""
    from tandem.bundle import write_bundle
    from tandem.bundle.store import load_bundle
    from tandem.registry import VersionRecord

    with Registry(Settings(home=home)) as reg:
        source = reg.get(ref)
        bundle = load_bundle(source.path)

        def write(directory: Path, version: int) -> VersionRecord:
            manifest = replace(bundle.manifest, version=version)
            digest = write_bundle(directory, manifest, bundle.graph, dict(bundle.extras))
            return VersionRecord(digest=digest, task=manifest.task, family=manifest.family,
                                 metrics=source.metrics, data_fingerprint=source.data_fingerprint,
                                 parent_version=source.version,
                                 tags={"optimized": technique})  # fmt: skip

        return reg.register(source.name, write).ref


def test_variants_are_the_versions_optimized_from_this_one(models_home: Path) -> None:
    first = _register_optimized(models_home, "num:1", "int8-dynamic")
    newer = _register_optimized(models_home, "num:1", "int8-dynamic")
    pruned = _register_optimized(models_home, "num:1", "prune 50%")
    _register_optimized(models_home, pruned, "int8-dynamic")  # of the pruned one, not num:1
    with Registry(Settings(home=models_home)) as reg:
        variants = optimized_variants(reg, reg.get("num:1"))
    assert first != newer  # two int8 versions of num:1: the newer is the variant
    assert variants == {"fp32": "num:1", "int8-dynamic": newer, "prune 50%": pruned}


@pytest.mark.slow
def test_advise_serves_each_variant_from_its_own_version(models_home: Path) -> None:
    int8 = _register_optimized(models_home, "num:1", "int8-dynamic")
    done = advise_cli(
        models_home, "num:1", "--p99-ms", "250", "--rps", "40", "--threads", "1",
        "--max-batch", "0", "--processes", "1", "--window-s", "0.4", "--max-windows", "8",
        "--confirm-rounds", "0", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    advice = json.loads(done.stdout)
    assert advice["variants"] == {"fp32": "num:1", "int8-dynamic": int8}
    assert {p["config"]["variant"] for p in advice["points"]} == {"fp32", "int8-dynamic"}
    assert any(int8 in note for note in advice["notes"])
    with Registry(Settings(home=models_home)) as reg:  # the sweep's load is not booked
        assert reg.runs("num", int(int8.split(":")[1]), phase="serve") == []
    bad = advise_cli(models_home, "num:1", "--p99-ms", "10", "--rps", "5", "--variant", "int4",
                     timeout=60)  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "num:1 has no variant 'int4'" in " ".join(bad.stderr.split()), bad.stderr


@pytest.mark.slow
def test_an_objective_out_of_reach_is_said_plainly(models_home: Path) -> None:
    done = advise_cli(
        models_home, "mixed", "--p99-ms", "5", "--rps", "1000000", "--threads", "1",
        "--max-batch", "0", "--processes", "1", "--window-s", "0.3", "--max-windows", "6",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "no configuration measured here meets the objective" in text
    assert "below 1,000,000/s" in text
    assert "no estimate" in text  # no FLOPs model for training trees on a GPU, said so
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["num", "--p99-ms", "10", "--rps", "0"], "--rps and --p99-ms must be > 0"),
        (["num", "--p99-ms", "inf", "--rps", "5"], "finite"),
        (["num", "--p99-ms", "10", "--rps", "5", "--processes", "1,65"], "at most 64"),
        (["num", "--p99-ms", "10", "--rps", "5", "--threads", "one"], "whole numbers"),
        (["num", "--p99-ms", "10", "--rps", "5", "--processes", "0"], "must be >= 1"),
        (["nope", "--p99-ms", "10", "--rps", "5"], "no model named 'nope'"),
        (["num", "--rps", "5"], "--p99-ms"),
    ],
)
def test_bad_usage_exits_2(models_home: Path, args: list[str], message: str) -> None:
    done = advise_cli(models_home, *args, timeout=60)
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split()) and "Traceback" not in done.stderr
