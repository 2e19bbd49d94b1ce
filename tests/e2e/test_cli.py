"""The `tandem` command as users run it: real subprocesses, a real registry on disk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.helpers import TANDEM, cli_env, mixed_table


def tandem(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TANDEM, *map(str, args)], capture_output=True, text=True, env=cli_env(home), timeout=300
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "houses.csv"
    pacsv.write_csv(mixed_table(400), path)
    return path


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_train_list_show_promote_predict_delete(home: Path, data: Path, tmp_path: Path) -> None:
    trained = tandem(
        home, "train", data, "--target", "target", "--name", "houses", "--model", "gbdt", "--json"
    )
    assert trained.returncode == 0, trained.stderr
    info = json.loads(trained.stdout)
    assert info["model"] == "houses:1" and info["family"] == "gbdt"
    assert (
        tandem(
            home, "train", data, "--target", "target", "--name", "houses", "--model", "linear"
        ).returncode
        == 0
    )

    listed = json.loads(tandem(home, "models", "--json").stdout)
    assert listed[0]["name"] == "houses" and listed[0]["latest_version"] == 2

    promoted = tandem(home, "promote", "houses:1", "--alias", "champion")
    assert promoted.returncode == 0, promoted.stderr
    shown = json.loads(tandem(home, "models", "show", "houses@champion", "--json").stdout)
    assert shown["version"] == 1 and shown["aliases"] == ["champion"]
    assert shown["manifest"]["family"] == "gbdt"
    human = tandem(home, "models", "show", "houses@champion")
    assert "houses:1" in human.stdout and "champion" in human.stdout

    rows = tmp_path / "rows.parquet"
    pq.write_table(mixed_table(30, seed=5).drop_columns(["target"]), rows)
    out = tmp_path / "predictions.csv"
    predicted = tandem(home, "predict", "houses@champion", "--input", rows, "--output", out)
    assert predicted.returncode == 0, predicted.stderr
    table = pacsv.read_csv(out)
    assert table.num_rows == 30 and table.column_names == ["label", "proba_no", "proba_yes"]
    as_json = json.loads(tandem(home, "predict", "houses:1", "--input", rows, "--json").stdout)
    assert as_json == table.to_pylist()

    assert tandem(home, "models", "delete", "houses:1").returncode == 2  # the alias protects it
    assert tandem(home, "models", "delete", "houses:1", "--force").returncode == 0
    left = json.loads(tandem(home, "models", "--json").stdout)
    assert left[0]["versions"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{data}", "--target", "nope", "--name", "m"], "target column 'nope'"),
        (["train", "{tmp}/missing.csv", "--target", "t", "--name", "m"], "does not exist"),
        (["train", "{empty}", "--target", "t", "--name", "m"], "empty.csv"),
        (
            ["train", "{data}", "--target", "target", "--name", "m", "--model", "xgb"],
            "unknown model",
        ),
        (["predict", "ghost", "--input", "{data}"], "no model named 'ghost'"),
        (["predict", "ghost:x", "--input", "{data}"], "ghost:x"),
        (["promote", "ghost", "--alias", "champion"], "names no version"),
        (["train", "{data}", "--name", "m", "--task", "regression"], "--target"),
        (
            ["predict", "ghost", "--input", "{data}", "--output", "{tmp}/nodir/out.csv"],
            "does not exist",
        ),
        (
            ["predict", "ghost", "--input", "{data}", "--output", "{tmp}/out.txt"],
            "cannot tell the format",
        ),
    ],
)
def test_bad_usage_exits_2_with_a_message_and_changes_nothing(
    home: Path, data: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    argv = [a.format(data=data, tmp=tmp_path, empty=empty) for a in args]
    result = tandem(home, *argv)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join((result.stderr + result.stdout).split())
    _no_traceback(result)
    assert not (home / "artifacts").exists() or not any(
        p for p in (home / "artifacts").iterdir() if not p.name.startswith(".")
    )


def test_predict_on_rows_missing_a_column_names_it(home: Path, data: Path, tmp_path: Path) -> None:
    assert (
        tandem(
            home, "train", data, "--target", "target", "--name", "m", "--model", "linear"
        ).returncode
        == 0
    )
    rows = tmp_path / "rows.csv"
    pacsv.write_csv(mixed_table(5).drop_columns(["target", "city"]), rows)
    out = tmp_path / "out.csv"
    result = tandem(home, "predict", "m", "--input", rows, "--output", out)
    assert result.returncode == 2 and "['city']" in result.stderr
    assert not out.exists()
    _no_traceback(result)


def test_a_tampered_bundle_is_refused(home: Path, data: Path) -> None:
    assert (
        tandem(
            home, "train", data, "--target", "target", "--name", "m", "--model", "linear"
        ).returncode
        == 0
    )
    graph = next((home / "artifacts").rglob("model.onnx"))
    graph.write_bytes(graph.read_bytes()[:-1] + b"\x00")
    result = tandem(home, "predict", "m", "--input", data)
    assert result.returncode == 1 and "model.onnx" in result.stderr and "altered" in result.stderr
    _no_traceback(result)


@pytest.mark.slow
def test_concurrent_trainings_of_one_name_get_distinct_versions(home: Path, data: Path) -> None:
    procs = [
        subprocess.Popen(
            [
                *TANDEM,
                "train",
                str(data),
                "--target",
                "target",
                "--name",
                "race",
                "--model",
                "linear",
                "--seed",
                str(i),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(home),
        )
        for i in range(3)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    refs = sorted(json.loads(r[0])["model"] for r in results)
    assert refs == ["race:1", "race:2", "race:3"]
    seeds = {
        json.loads(tandem(home, "models", "show", ref, "--json").stdout)["manifest"]["recipe"][
            "seed"
        ]
        for ref in refs
    }
    assert seeds == {0, 1, 2}  # each version holds its own run, none overwritten
