"""The MLflow / SageMaker scoring protocol: every body form gives the Predictor's numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tandem
from tests.serving.conftest import Running, running_server
from tests.serving.test_oip import post

ROWS = [
    {"x1": 0.5, "x2": None, "city": "paris", "rooms": 3, "garden": True},
    {"x1": -1.0, "x2": 2.0, "city": "atlantis", "rooms": 1, "garden": False},
]
NAMES = ["x1", "x2", "city", "rooms", "garden"]


def expected(home: Path) -> list[dict[str, Any]]:
    with tandem.Registry(tandem.Settings(home=home)) as reg:
        out: list[dict[str, Any]] = tandem.load("mixed", registry=reg).predict(ROWS)
    return out


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g["proba_yes"] == pytest.approx(w["proba_yes"], rel=1e-12)


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": {"columns": NAMES, "data": [[r[c] for c in NAMES] for r in ROWS]}},
        {"dataframe_split": {"data": [[r[c] for c in NAMES] for r in ROWS]}},  # signature order
        {"dataframe_records": ROWS},
        {"instances": ROWS},
        {"instances": [[r[c] for c in NAMES] for r in ROWS]},
        {"inputs": {c: [r[c] for r in ROWS] for c in NAMES}},
        {"inputs": ROWS, "params": {"timeout_ms": 5000}},
    ],
    ids=[
        "split",
        "split-no-columns",
        "records",
        "instances",
        "instances-lists",
        "inputs-columns",
        "inputs-rows",
    ],
)
def test_every_json_form_predicts_like_the_predictor(
    mixed_server: Running, models_home: Path, body: dict[str, Any]
) -> None:
    status, answer, headers = post(mixed_server, "/invocations", body)
    assert status == 200, answer
    assert headers["x-tandem-model"] == "mixed:1"
    assert_same(answer["predictions"], expected(models_home))


@pytest.mark.parametrize("header", [True, False])
def test_csv_with_or_without_a_header(
    mixed_server: Running, models_home: Path, header: bool
) -> None:
    lines = [",".join(NAMES)] if header else []
    for r in ROWS:
        lines.append(
            ",".join(
                "" if r[c] is None else str(r[c]).lower() if isinstance(r[c], bool) else str(r[c])
                for c in NAMES
            )
        )
    status, answer, _ = post(
        mixed_server, "/invocations", "\n".join(lines).encode(), {"content-type": "text/csv"}
    )
    assert status == 200, answer
    assert_same(answer["predictions"], expected(models_home))


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"x1\n1", "text/plain", 415, "content type 'text/plain' is not accepted"),
        (b"{}", "application/xml", 415, "send application/json"),
        (b"{", "application/json", 400, "not valid JSON"),
        (json.dumps({"instances": ROWS, "inputs": ROWS}).encode(), "application/json", 400, "exactly one of"),
        (json.dumps({"rows": ROWS}).encode(), "application/json", 400, "it holds none"),
        (json.dumps({"dataframe_split": {"columns": NAMES, "data": [[1, 2]]}}).encode(), "application/json", 400, "row 0 has 2 values; every row needs 5"),
        (json.dumps({"dataframe_records": [{"x1": 1}]}).encode(), "application/json", 400, "row 0 lacks column(s)"),
        (json.dumps({"instances": [1, 2]}).encode(), "application/json", 400, "only a one-column model"),
        (json.dumps({"dataframe_records": [{**ROWS[0], "x1": "high"}]}).encode(), "application/json", 400, "x1"),
    ],
    ids=["text", "xml", "bad-json", "two-forms", "no-form", "short-row", "missing-col", "scalars", "text-in-number"],
)  # fmt: skip
def test_bad_requests_get_a_status_and_a_message(
    mixed_server: Running, body: bytes, content_type: str, status: int, message: str
) -> None:
    got, answer, _ = post(mixed_server, "/invocations", body, {"content-type": content_type})
    assert got == status
    assert answer["error_code"] in ("BAD_REQUEST",)
    assert message in answer["message"]
    assert "Traceback" not in answer["message"]


def test_several_models_need_a_name_on_invocations(models_home: Path) -> None:
    with running_server(["mixed", "num:1"], models_home) as server:
        status, answer, _ = post(server, "/invocations", {"dataframe_records": ROWS})
        assert status == 400 and "name one with '?model=NAME'" in answer["message"]
        status, answer, headers = post(
            server, "/invocations?model=mixed", {"dataframe_records": ROWS}
        )
        assert status == 200 and headers["x-tandem-model"] == "mixed:1"
        x = np.zeros((2, 6))
        status, answer, headers = post(
            server,
            "/invocations",
            {"instances": x.tolist()},
            {"content-type": "application/json", "x-tandem-model": "num"},
        )
        assert status == 200 and headers["x-tandem-model"] == "num:1"
        assert len(answer["predictions"]) == 2
        status, answer, _ = post(server, "/invocations?model=other", {"instances": []})
        assert status == 404 and "served: ['mixed', 'num']" in answer["message"]
