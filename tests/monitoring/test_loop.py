"""The loop end to end, with real parts: a served champion logs production traffic whose
inputs and concept have moved; labels arrive late (`tandem feedback`); `tandem monitor --since`
finds the drift and the decay; `tandem retrain --promote` trains a challenger on the fresh
rows, beats the champion beyond the interval, and moves the alias, which the running server
follows without failing a request; `tandem promote NAME:V` rolls back; every decision is
stored and shown by `tandem models show`."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tandem
from tandem import Registry, Settings
from tandem.monitoring.predictions import LogOptions
from tests.helpers import TANDEM, cli_env
from tests.serving.conftest import running_server


def world(n: int, *, seed: int, later: bool) -> pa.Table:
    """Before: rain when x1 + x2/2 > 0. Later: x1 has moved up by half a unit, and the rule
    turned: rain when x2 - x1 > 0.5 (the champion is then mostly wrong)."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0.5 if later else 0.0, 1.0, n)
    x2 = rng.normal(size=n)
    city = rng.choice(["oslo", "rome", "lima"], size=n)
    rain = (x2 - x1 > 0.5) if later else (x1 + x2 / 2 > 0)
    return pa.table({"x1": x1, "x2": x2, "city": city, "rain": np.where(rain, "yes", "no")})


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TANDEM, *args], env=cli_env(home) | {"COLUMNS": "200"},
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def ask(url: str, rows: list[dict[str, object]]) -> tuple[list[str], str, str]:
    body = json.dumps({"dataframe_records": rows}).encode()
    request = urllib.request.Request(
        f"{url}/invocations", body, {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        labels = [p["label"] for p in json.loads(r.read())["predictions"]]
        return labels, r.headers["x-request-id"], r.headers["x-tandem-model"]


@pytest.mark.slow
def test_drift_decay_retrain_promote_rollback(home: Path, tmp_path: Path) -> None:
    with Registry(Settings(home=home)) as reg:
        tandem.train(world(3000, seed=1, later=False), target="rain", name="rain", model="gbdt",
                     params={"max_rounds": 60}, registry=reg)  # fmt: skip
        reg.set_alias("rain", 1, "champion")
    later = world(4000, seed=2, later=True)
    # production: 1,000 rows like the training data, then 2,000 of the later world
    traffic = pa.concat_tables([world(1000, seed=5, later=False), later.slice(0, 2000)])
    features = traffic.drop_columns(["rain"]).to_pylist()
    truth = traffic.column("rain").to_pylist()

    ids, served = [], []
    with running_server(["rain@champion"], home, poll_s=0.2, log=LogOptions(flush_s=0.2)) as srv:
        for i in range(0, 3000, 20):  # 150 requests of 20 rows
            _, rid, model = ask(srv.url, features[i : i + 20])
            ids += [(rid, k, truth[i + k]) for k in range(20)]
            served.append(model)
        time.sleep(0.5)  # one flush: the log is on disk for the commands below

        labels = pa.table({"request_id": [r for r, _, _ in ids], "row": [k for _, k, _ in ids],
                           "rain": [t for _, _, t in ids]})  # fmt: skip
        pq.write_table(labels, tmp_path / "labels.parquet")
        done = cli(home, "feedback", "rain", "--labels", str(tmp_path / "labels.parquet"), "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["matched_rows"] == 3000

        done = cli(home, "monitor", "rain@champion", "--since", "1h", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["drifted"] and "x1" in report["drifted_columns"]
        assert (
            "city" not in report["drifted_columns"]
        )  # (x2, unmoved, may read as noise at 2k rows)
        assert any(c.startswith("__proba_") or c == "__label" for c in report["drifted_columns"])
        perf = report["performance"]
        assert perf["rows"] == 3000 and perf["overall"]["accuracy"] < 0.75
        assert perf["at_training"]["accuracy"] > 0.85 and perf["alarm"] is not None
        domain = report["domain_classifier"]  # all columns together: x1 separates them most
        assert domain["p_value"] < 0.05 and domain["top_features"][0][0] == "x1"

        done = cli(
            home, "monitor", "rain@champion", "--since", "1h", "--html", str(tmp_path / "m.html")
        )
        assert done.returncode == 0, done.stderr
        assert "drift in" in done.stdout and "decay alarm: 2" in " ".join(done.stdout.split())
        assert "x1" in (tmp_path / "m.html").read_text()

        # the fresh labelled rows: the rest of the later period
        pq.write_table(later.slice(2000), tmp_path / "fresh.parquet")
        done = cli(
            home,
            "retrain",
            "rain",
            "--data",
            str(tmp_path / "fresh.parquet"),
            "--promote",
            "--json",
        )
        assert done.returncode == 0, done.stderr
        decision = json.loads(done.stdout)
        assert decision["promoted"] and decision["challenger"] == 2 and decision["champion"] == 1
        assert decision["interval"][0] > 0 and decision["holdout_rows"] == 500
        assert (
            decision["challenger_metrics"]["accuracy"]
            > 0.85
            > decision["champion_metrics"]["accuracy"]
        )

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the server follows the alias; nothing fails
            _, _, model = ask(srv.url, features[:1])
            served.append(model)
            if model == "rain:2":
                break
        assert served[-1] == "rain:2" and served[0] == "rain:1"

        done = cli(home, "promote", "rain:1", "--reason", "rollback drill")
        assert done.returncode == 0 and "rain@champion → rain:1 (was rain:2)" in done.stdout

        # the loop in one command: drift found, retrained on the log's labelled rows
        done = cli(home, "monitor", "rain@champion", "--since", "1h", "--retrain", "--json")
        assert done.returncode == 0, done.stderr
        again = json.loads(done.stdout)["retrain"]
        assert again["champion"] == 1 and again["challenger"] == 3 and not again["promoted"]
        assert again["train_rows"] + again["holdout_rows"] == 3000

    done = cli(home, "models", "show", "rain:1", "--json")  # it took part in all three
    shown = json.loads(done.stdout)["decisions"]
    assert [(d["kind"], d["promoted"], d["challenger_version"]) for d in shown] == [
        ("retrain", True, 2), ("manual", True, 1), ("retrain", False, 3)]  # fmt: skip
    assert shown[2]["evidence"]["trigger"]["drifted_columns"]  # what set it off
    assert shown[0]["evidence"]["champion"]["metrics"]["accuracy"] < 0.6
    assert shown[1]["reason"] == "rollback drill"
    text = cli(home, "models", "show", "rain:2").stdout
    assert "retrain: rain:2 vs rain:1 for @champion: promoted" in " ".join(text.split())
    with Registry(Settings(home=home)) as reg:
        assert reg.get("rain@champion").version == 1
        assert reg.get("rain:2").parent_version == 1


def test_no_promotion_without_evidence(home: Path, tmp_path: Path) -> None:
    """Fresh rows like the old ones: the challenger is no better beyond the interval, so the
    alias stays, and the decision says why. --with-old trains on the champion's data too."""
    pq.write_table(world(2000, seed=1, later=False), tmp_path / "old.parquet")
    with Registry(Settings(home=home)) as reg:
        tandem.train(tmp_path / "old.parquet", target="rain", name="rain", model="linear",
                     registry=reg)  # fmt: skip
        reg.set_alias("rain", 1, "champion")
    pq.write_table(world(1200, seed=3, later=False), tmp_path / "fresh.parquet")
    done = cli(home, "retrain", "rain", "--data", str(tmp_path / "fresh.parquet"), "--promote",
               "--with-old", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert not decision["promoted"] and decision["interval"][0] <= 0
    assert decision["reason"].startswith("kept the champion")
    assert decision["train_rows"] == 2000 + 900 and decision["holdout_rows"] == 300
    with Registry(Settings(home=home)) as reg:
        assert reg.get("rain@champion").version == 1
        (d,) = reg.decisions("rain")
        assert d.kind == "retrain" and not d.promoted and d.challenger_version == 2


@pytest.fixture(scope="module")
def small_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rain:1``, a linear model on 300 rows, and no alias."""
    home = tmp_path_factory.mktemp("small")
    with Registry(Settings(home=home)) as reg:
        tandem.train(world(300, seed=1, later=False), target="rain", name="rain", model="linear",
                     registry=reg)  # fmt: skip
    pq.write_table(world(200, seed=3, later=True), home / "fresh.parquet")
    return home


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retrain", "rain", "--data", "{fresh}"], "rain@champion does not exist"),
        (["retrain", "nope", "--data", "{fresh}"], "no model"),
        (["monitor", "rain"], "--current FILE or --since DURATION"),
        (["monitor", "rain", "--since", "yesterday"], "yesterday"),
        (["monitor", "rain", "--since", "1h"], "no predictions of rain are logged"),
        (["feedback", "rain", "--labels", "{fresh}"], "no predictions of rain are logged"),
    ],
)
def test_bad_usage_exits_2(small_home: Path, args: list[str], message: str) -> None:
    done = cli(small_home, *(a.replace("{fresh}", str(small_home / "fresh.parquet")) for a in args))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in " ".join(done.stderr.split()) and "Traceback" not in done.stderr
