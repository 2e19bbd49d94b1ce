"""``tandem report``: the ledger's records of a real training run, a real ``tandem serve``
process and a real batch job, priced and projected."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem import Registry, Settings
from tandem.ledger.cost import PriceTable
from tandem.ledger.meter import process_cpu_seconds
from tandem.ledger.report import (
    ServingFigures,
    TrainingFigures,
    _fit_cpu,
    build_report,
    histogram_quantile,
    project,
)
from tandem.registry import RunRecord
from tandem.serving.loadtest import closed_loop
from tests.helpers import TANDEM, cli_env, finish, free_port, numeric_table
from tests.serving.test_app import wait_until_ready

REQUESTS = 600


def report_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TANDEM, "report", *args], capture_output=True, text=True,
                          env=cli_env(home), timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def served_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """``num:1`` trained, served by a real process under load, and scored by a batch job;
    returns the home and the server's CPU seconds read from /proc just before it stopped."""
    import tandem

    home = tmp_path_factory.mktemp("ledger-home")
    with Registry(Settings(home=home)) as reg:
        tandem.train(numeric_table(), target="y", name="num", model="mlp",
                     params={"hidden": 32}, time_budget=5, registry=reg)  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [*TANDEM, "serve", "num:1", "--port", str(port), "--ledger-interval", "0.5"],
        env=cli_env(home), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert wait_until_ready(port, proc)
        rows = numeric_table().drop_columns(["y"]).slice(0, REQUESTS).to_pylist()
        bodies = [orjson.dumps({"dataframe_records": [row]}) for row in rows]
        load = closed_loop("127.0.0.1", port, "/invocations", bodies, concurrency=4)
        assert {a[0] for a in load.answers} == {200}
        time.sleep(1.2)  # quiet intervals: the idle rate
        cpu = process_cpu_seconds(proc.pid)
    finally:
        code, _, err = finish(proc)
    assert code == 0, err
    source = home / "rows.parquet"
    pq.write_table(numeric_table(n=5000).drop_columns(["y"]), source)
    done = subprocess.run([*TANDEM, "batch", "num:1", "--input", str(source), "--output",
                           str(home / "out.parquet")], env=cli_env(home), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert cpu is not None
    return home, cpu


def test_every_request_and_cpu_second_of_the_server_is_in_the_ledger(
    served_home: tuple[Path, float],
) -> None:
    home, server_cpu = served_home
    with Registry(Settings(home=home)) as reg:
        runs = reg.runs("num", 1, phase="serve")
    kinds = [r.details["kind"] for r in runs]
    assert kinds[0] == "startup" and set(kinds[1:]) == {"interval"} and len(kinds) >= 4
    assert sum(r.details["requests"] for r in runs) == REQUESTS
    assert sum(r.rows for r in runs) == REQUESTS
    assert sum(r.details["codes"].get("200", 0) for r in runs) == REQUESTS
    # the start-up record counts from the process's start, so the records add up to the
    # process's CPU time (read just before SIGTERM; the last record adds the shutdown)
    recorded = sum(r.cpu_seconds for r in runs)
    assert server_cpu * 0.98 <= recorded <= server_cpu + 0.5
    assert runs[0].cpu_seconds > 0.3  # imports, registry, loading and warm-up
    latency = [sum(r.details["latency"]["cumulative"][-1] for r in runs)]
    assert latency == [REQUESTS]
    for r in runs:
        assert r.details["hardware"]["cores"] >= 1 and "energy" in r.details


def test_report_json_holds_the_measured_table_and_the_projection(
    served_home: tuple[Path, float],
) -> None:
    home, _ = served_home
    done = report_cli(home, "num", "--json", "--requests-per-day", "50000", "--months", "6",
                      "--retrain-every", "7")  # fmt: skip
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert (r["name"], r["version"], r["currency"]) == ("num", 1, "USD")
    t, s, b = r["training"], r["serving"], r["batch"]
    assert t["family"] == "mlp" and t["epochs"] >= 1 and t["rows"] == 800 and t["features"] == 6
    assert t["per_run"]["cpu_seconds"] > 0 and t["per_run"]["money"] > 0
    assert (
        "estimated" in t["per_run"]["energy_source"] or "measured" in t["per_run"]["energy_source"]
    )
    assert 0 < t["epoch_p50_s"] <= t["epoch_p99_s"]
    assert s["requests"] == s["predictions"] == s["ok"] == REQUESTS
    assert 0 < s["latency_p50_s"] <= s["latency_p99_s"] < 1
    assert s["cpu_per_request"] > 0 and s["idle_cpu_per_s"] >= 0
    assert b["jobs"] == 1 and b["rows"] == 5000 and b["per_1k"]["cpu_seconds"] > 0
    p = r["projection"]
    assert p["requests_per_day"] == 50000 and p["requests_source"] == "given"
    assert len(p["days"]) == round(6 * 365.25 / 12) + 1
    assert p["retrains"] == p["days"][-1] // 7
    assert p["training_money"][-1] == pytest.approx((1 + p["retrains"]) * t["per_run"]["money"])
    total = p["training_money"][-1] + p["inference_money"][-1]
    assert p["inference_share"] == pytest.approx(p["inference_money"][-1] / total)


def test_report_renders_a_table_and_writes_an_html_page_with_charts(
    served_home: tuple[Path, float], tmp_path: Path
) -> None:
    home, _ = served_home
    page = tmp_path / "num.html"
    done = report_cli(home, "num:1", "--requests-per-day", "1000", "--html", str(page))
    assert done.returncode == 0, done.stderr
    for measure in ("purpose", "compute", "latency", "data handled", "energy", "cost", "carbon",
                    "frequency", "hardware", "lifetime projection"):  # fmt: skip
        assert measure in done.stdout, measure
    text = page.read_text()
    assert re.search(r"inference (overtakes training on day \d+|stays below training)", text)
    svgs = re.findall(r"<svg.*?</svg>", text, flags=re.S)
    assert len(svgs) == 2
    for svg in svgs:
        root = ET.fromstring(svg)  # well-formed
        lines = root.findall("{http://www.w3.org/2000/svg}polyline")
        assert len(lines) >= 2  # a curve per phase
    assert "training vs inference" in text.lower() and "Prices:" in text
    assert not list(tmp_path.glob(".num.html.*"))  # no temporary file left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no model named 'nope'"),
        (["num", "--months", "0"], "--months must be > 0"),
        (["num", "--requests-per-day", "-5"], "--requests-per-day must be >= 0"),
        (["num", "--html", "/nonexistent-folder/r.html"], "does not exist"),
        (["num", "--prices", "/nonexistent.toml"], "price table /nonexistent.toml does not exist"),
    ],
)
def test_bad_report_input_exits_2_with_a_message(
    served_home: tuple[Path, float], args: list[str], message: str
) -> None:
    done = report_cli(served_home[0], *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_version_never_served_is_reported_without_a_projection(tmp_path: Path) -> None:
    import tandem

    with Registry(Settings(home=tmp_path)) as reg:
        tandem.train(numeric_table(), target="y", name="fresh", model="linear", registry=reg)
        report = build_report(reg, "fresh", PriceTable.load(settings=reg.settings))
    assert report.training is not None and report.serving is None and report.projection is None
    assert any("has not been served yet" in n for n in report.notes)


# -- the arithmetic ------------------------------------------------------------------------------


def training(money: float) -> TrainingFigures:
    from tandem.ledger.report import PhaseCost

    return TrainingFigures(
        family="mlp", wall_seconds=10, rows=100, features=3, epochs=5, epoch_p50_s=1,
        epoch_p99_s=1, fits=1, peak_rss_mb=100, hardware="cpu", runs_of_model=1,
        per_run=PhaseCost(3600.0, 1000.0, money, 1.0, "estimated"),
    )  # fmt: skip


def serving(
    cpu_per_request: float, idle: float = 0.0, curve: list[tuple[float, float]] | None = None
) -> ServingFigures:
    from tandem.ledger.report import PhaseCost

    nan = PhaseCost(math.nan, math.nan, math.nan, math.nan, "")
    return ServingFigures(
        intervals=1, servers=1, wall_seconds=1, requests=1, ok=1, predictions=1,
        latency_p50_s=None, latency_p99_s=None, cpu_seconds=1, startup_cpu_seconds=0,
        idle_cpu_per_s=idle, cpu_per_request=cpu_per_request, requests_per_day_observed=1,
        rate_curve=curve or [],
        peak_rss_mb=0.0, joules_per_cpu_s=None, per_1k=nan, per_1k_requests=nan, hardware="cpu",
    )  # fmt: skip


def test_projection_finds_the_day_inference_overtakes_training(tmp_path: Path) -> None:
    prices = PriceTable.load(settings=Settings(home=tmp_path))
    # a day of serving: 3,600 CPU-s = one core-hour, plus its estimated energy
    per_day_money = prices.cpu_core_hour * (1 + prices.estimates.cpu_watts_per_core / 1000
                                            * prices.pue * prices.kwh / prices.cpu_core_hour)  # fmt: skip
    p = project(training(per_day_money * 10.5), serving(cpu_per_request=0.036),
                requests_per_day=100_000, months=1, retrain_every=None, prices=prices)  # fmt: skip
    assert p.inference_money[1] == pytest.approx(per_day_money)
    assert p.crossover_day == 11 and p.retrains == 0
    never = project(training(1e9), serving(0.036), requests_per_day=100_000, months=1,
                    retrain_every=7, prices=prices)  # fmt: skip
    assert never.crossover_day is None and never.days[-1] == 30 and never.retrains == 30 // 7
    assert never.training_money[-1] == pytest.approx((1 + never.retrains) * 1e9)


def test_the_cost_per_request_is_read_at_the_projected_rate() -> None:
    from tandem.ledger.report import cpu_per_request_at

    s = serving(0.0008, curve=[(100.0, 0.001), (1000.0, 0.0005)])
    assert cpu_per_request_at(s, 10**2.5) == (pytest.approx(0.00075), True)
    assert cpu_per_request_at(s, 120.0)[1] and cpu_per_request_at(s, 1400.0)[1]
    # beyond the measured rates: the nearest, flagged
    assert cpu_per_request_at(s, 1.0) == (0.001, False)
    assert cpu_per_request_at(s, 10_000.0) == (0.0005, False)


@given(
    st.lists(st.integers(0, 50), min_size=2, max_size=20),
    st.floats(0.01, 0.99),
    st.floats(0.01, 0.99),
)
def test_histogram_quantiles_are_monotone_and_inside_their_bucket(
    counts: list[int], q1: float, q2: float
) -> None:
    le = [0.001 * 2**i for i in range(len(counts) - 1)]
    cumulative = list(np.cumsum(counts))
    a = histogram_quantile(min(q1, q2), le, cumulative)
    b = histogram_quantile(max(q1, q2), le, cumulative)
    if cumulative[-1] == 0:
        assert a is None and b is None
        return
    assert a is not None and b is not None and 0 <= a <= b <= le[-1]


@given(st.floats(0.0, 0.05), st.floats(1e-5, 1e-2), st.lists(st.integers(0, 5000), min_size=3,
       max_size=12))  # fmt: skip
def test_the_cpu_fit_recovers_idle_and_per_request_cost(
    idle: float, per: float, requests: list[int]
) -> None:
    from datetime import UTC, datetime

    from tandem.registry import Run

    runs = [Run(id=i, name="m", version=1, phase="serve", finished_at=datetime.now(UTC),
                wall_seconds=10.0, cpu_seconds=idle * 10 + per * n, peak_rss_mb=1.0, rows=n,
                details={"requests": n}) for i, n in enumerate([0, *requests])]  # fmt: skip
    got_idle, got_per = _fit_cpu(runs)
    assert got_idle == pytest.approx(idle, abs=1e-9)
    if sum(requests):
        assert got_per == pytest.approx(per, rel=1e-6)
    # without a quiet interval, nothing is guessed to be idling: all of it is per request
    busy = [r for r in runs if r.rows]
    if busy:
        no_idle, all_per = _fit_cpu(busy)
        assert no_idle == 0
        assert all_per * sum(r.rows for r in busy) == pytest.approx(
            sum(r.cpu_seconds for r in busy)
        )


def test_run_records_are_all_or_nothing(tmp_path: Path) -> None:
    import tandem
    from tandem.errors import NotFoundError

    with Registry(Settings(home=tmp_path)) as reg:
        tandem.train(numeric_table(), target="y", name="m", model="linear", registry=reg)
        before = len(reg.runs("m"))
        record = RunRecord(phase="serve", wall_seconds=1, cpu_seconds=1, peak_rss_mb=1, rows=1)
        with pytest.raises(NotFoundError):
            reg.record_runs([("m", 1, record), ("m", 9, record)])
        assert len(reg.runs("m")) == before
