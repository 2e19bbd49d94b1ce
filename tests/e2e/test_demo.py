from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import TANDEM, cli_env


@pytest.mark.slow
def test_demo_trains_registers_predicts_and_compares_phases(home: Path) -> None:
    result = subprocess.run(
        [*TANDEM, "demo", "--time-budget", "10", "--json"],
        capture_output=True,
        text=True,
        env=cli_env(home),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "rain:1"
    assert {c["family"] for c in report["leaderboard"]} == {"linear", "gbdt", "mlp"}
    assert report["training"]["cpu_seconds"] > 0 and report["training"]["rows"]["train"] > 8000
    inference = report["inference"]
    assert (
        inference["rows"]
        == 18159
        - report["training"]["rows"]["train"]
        - report["training"]["rows"]["validation"]
        - report["training"]["rows"]["test"]
    )
    assert 0.5 < inference["accuracy"] <= 1 and 0.5 < inference["majority_class_accuracy"] < 1
    assert 0 < inference["single_row_p50_us"] <= inference["single_row_p99_us"]
    realtime = inference["realtime"]
    assert realtime["requests"] == 3000 and realtime["mismatches"] == 0
    assert 0 < realtime["p50_ms"] <= realtime["p99_ms"] and realtime["requests_per_s"] > 0
    batch = inference["batch"]  # the same later days, as a tandem batch job over a file
    assert batch["rows"] == inference["rows"] and batch["mismatches"] == 0
    # the loop: the served days were logged, labelled late, found drifted, and a challenger
    # trained on them was judged against the champion on the most recent of them
    loop = report["loop"]
    assert loop["labelled"] == 3000
    monitored = loop["monitor"]
    assert monitored["drifted"] and monitored["drifted_columns"]
    assert monitored["performance"]["rows"] == 3000
    decision = loop["retrain"]
    assert decision["champion"] == 1 and decision["challenger"] == 2
    assert decision["holdout_rows"] == 750 and decision["train_rows"] == 2250
    low, high = decision["interval"]
    assert low <= decision["difference"] <= high
    assert decision["promoted"] == (low > 0)
    assert batch["rows_per_s"] > 0 and batch["cpu_seconds"] > 0
    # it ends with the ledger's report of the same model, and its HTML page
    ledger = report["report"]
    assert ledger["training"]["per_run"]["cpu_seconds"] > 0
    assert ledger["serving"]["requests"] == 3000 and ledger["batch"]["rows"] == inference["rows"]
    assert ledger["projection"]["requests_per_day"] == 100_000
    # the server idled between requests for a few intervals: a small, measured idle rate
    assert 0 <= ledger["serving"]["idle_cpu_per_s"] < 0.2
    page = Path(report["html"]).read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2
    again = subprocess.run(
        [*TANDEM, "models", "show", "rain@champion", "--json"],
        capture_output=True,
        text=True,
        env=cli_env(home),
    )
    shown = json.loads(again.stdout)  # the champion is whoever the loop's decision left there
    assert shown["version"] == (2 if decision["promoted"] else 1)
    assert [d["kind"] for d in shown["decisions"]] == ["retrain"]
