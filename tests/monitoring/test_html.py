"""The drift page: drifted columns charted with bars that are the shares drift.py compared,
user column names escaped, the file written atomically."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tandem.data.profile import OTHER, profile_columns
from tandem.data.schema import ColumnSpec
from tandem.errors import UsageError
from tandem.monitoring.drift import drift
from tandem.monitoring.html import render_html, write_html

EVIL = "<script>alert(1)</script>"
CITIES = np.array(["paris", "lyon", "nice", "lille"])
SPECS = [
    ColumnSpec(name="x0", kind="numeric"),
    ColumnSpec(name="x1", kind="numeric"),
    ColumnSpec(name=EVIL, kind="numeric"),
    ColumnSpec(name="city", kind="categorical", categories=tuple(CITIES)),
]


def sample(n: int, seed: int, *, shift: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {s.name: rng.normal(size=n) for s in SPECS[:3]}
    cols["x0"] += shift
    cols[EVIL] += shift
    cols["x1"][rng.random(n) < 0.05] = np.nan
    p = [0.4, 0.3, 0.2, 0.1] if not shift else [0.2, 0.2, 0.2, 0.4]
    cols["city"] = rng.choice(CITIES, size=n, p=p)
    if shift:
        cols["city"][: n // 10] = "toulouse"  # unseen: drawn as __other__
    return cols


REFERENCE = profile_columns(SPECS, sample(4000, 0))
SHIFTED = sample(4000, 1, shift=0.5)
PAGE = render_html(
    "drift of may.parquet", REFERENCE, SHIFTED, drift(REFERENCE, SHIFTED),
    extra_rows=[("model", "churn:3"), ("window", "<may>")],
)  # fmt: skip


def figure(page: str, column: str) -> str:
    found = re.search(rf'<figure class="chart" id="[^"]+" data-column="{re.escape(column)}">.*?</figure>',
                      page, re.S)  # fmt: skip
    assert found, column
    return found.group(0)


def heights(chart: str, series: str) -> np.ndarray:
    found = re.findall(rf'<rect class="{series}" [^>]*height="([0-9.]+)"', chart)
    return np.array([float(h) for h in found])


def test_drifted_columns_are_charted_and_the_others_are_not() -> None:
    assert drift(REFERENCE, SHIFTED).drifted_columns == ["x0", EVIL, "city"]
    assert "Drift in 3 of 4 columns" in PAGE
    figure(PAGE, "x0")
    figure(PAGE, "city")
    assert 'data-column="x1"' not in PAGE
    assert PAGE.count('<tr class="drift">') == 3
    assert "<td>churn:3</td>" in PAGE and "<td>&lt;may&gt;</td>" in PAGE


def test_user_text_is_escaped_and_there_is_no_script() -> None:
    assert "<script" not in PAGE
    assert figure(PAGE, "&lt;script&gt;alert(1)&lt;/script&gt;").count("<svg") == 1


def test_numeric_bars_are_the_shares_on_the_reference_edges() -> None:
    chart = figure(PAGE, "x0")
    edges = np.asarray(REFERENCE["x0"]["bin_edges"])
    ref, cur = heights(chart, "reference"), heights(chart, "current")
    assert ref.size == cur.size == edges.size + 1
    assert cur.sum() == pytest.approx(ref.sum(), rel=1e-3)  # both sum to a share of 1
    expected = np.bincount(np.searchsorted(edges, SHIFTED["x0"], side="left"), minlength=ref.size)
    np.testing.assert_allclose(cur / cur.sum(), expected / expected.sum(), atol=1e-3)
    assert f"&gt; {edges[-1]:.4g}" in chart and f"≤ {edges[0]:.4g}" in chart


def test_categorical_bars_pool_unseen_categories_as_other() -> None:
    chart = figure(PAGE, "city")
    cur = heights(chart, "current")
    assert cur.size == 5 and f">{OTHER}</text>" in chart  # four cities, then __other__
    assert cur[-1] / cur.sum() == pytest.approx(0.1, abs=1e-3)
    assert heights(chart, "reference")[-1] == 0


def test_many_categories_pool_the_smallest_and_keep_one_that_surged() -> None:
    names = np.array([f"c{i:02d}" for i in range(60)])
    specs = [ColumnSpec(name="many", kind="categorical")]
    reference = profile_columns(specs, {"many": names[np.arange(6000) % 60]})
    current = {"many": np.where(np.arange(6000) % 2 == 0, "c40", names[np.arange(6000) % 60])}
    chart = figure(render_html("t", reference, current, drift(reference, current)), "many")
    cur, ref = heights(chart, "current"), heights(chart, "reference")
    assert cur.size == 13 and ">c40</text>" in chart and f">{OTHER}</text>" in chart
    assert cur.sum() == pytest.approx(ref.sum(), rel=1e-3)


def test_with_no_drift_the_three_closest_are_charted_and_labelled() -> None:
    clean = sample(4000, 2)
    result = drift(REFERENCE, clean)
    assert not result.drifted
    page = render_html("clean", REFERENCE, clean, result)
    assert "No drift in 4 columns" in page and "closest to their threshold" in page
    assert page.count('<figure class="chart"') == 3 and '<tr class="drift">' not in page


def test_the_file_is_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "drift.html"
    write_html(target, "old")
    write_html(str(target), PAGE)
    assert target.read_text(encoding="utf-8") == PAGE
    assert os.listdir(tmp_path) == ["drift.html"]  # no temporary file left behind


def test_a_missing_folder_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=re.escape(str(tmp_path / "nope"))):
        write_html(tmp_path / "nope" / "drift.html", PAGE)


@pytest.mark.parametrize("fails", ["mkstemp", "replace"])
def test_an_unwritable_folder_is_a_usage_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    # chmod cannot deny root, so the refusal is simulated where the OS would raise it
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    target = tmp_path / "drift.html"
    target.write_text("old", encoding="utf-8")
    monkeypatch.setattr(tempfile if fails == "mkstemp" else os, fails, refuse)
    with pytest.raises(UsageError, match=re.escape(str(target)) + ".*Permission denied"):
        write_html(target, PAGE)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["drift.html"]
    assert target.read_text(encoding="utf-8") == "old"
