"""A drift check as one self-contained HTML file: the verdict, every column's statistics,
and a chart of the reference against the current distribution for each drifted column.

The charts are inline SVG in the manner of :mod:`tandem.ledger.html` (no script, no network).
They draw what :mod:`tandem.monitoring.drift` compared: numbers as shares of the reference's
decile bins, the current values binned on the same edges; categories as shares of the
reference's categories, the ones it never saw pooled with its ``__other__``. Shares are of the
non-missing values; the missing rates are in the caption and the table.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tandem.data.profile import OTHER
from tandem.data.schema import MISSING_CATEGORY
from tandem.errors import UsageError
from tandem.ledger import html as ledger_html
from tandem.ledger.html import _nice_max, svg_open
from tandem.monitoring.drift import THRESHOLDS, ColumnDrift, DatasetDrift

__all__ = ["render_html", "write_html"]

_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 720, 320, 72, 16, 30, 100
_COLORS = {"reference": "#9e9e9e", "current": "#d95f02"}
#: categories drawn by name; the rest are pooled into the ``__other__`` bar
_MAX_BARS = 12
#: charts shown when no column drifted: the columns closest to their threshold
_CLOSEST = 3
_MEASURES = {"wasserstein_sd": "Wasserstein-1 / sd", "jensen_shannon": "Jensen–Shannon"}
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}h2{font-size:1.1em;margin-top:1.5em}h3{font-size:1em}"
    "tr.drift td{background:#fde0d2}.verdict{font-size:1.15em;font-weight:600}"
    "figure{margin:0 0 1.5em}figcaption{font-size:0.9em;color:#555}"
)

_e = html.escape


def _numeric_counts(
    ref: Mapping[str, Any], values: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Bin labels, reference counts and current counts on the reference's decile edges."""
    edges = np.asarray(ref["bin_edges"], dtype=float)
    values = np.asarray(values, dtype=float)
    present = values[~np.isnan(values)]
    # the rule drift.py and the profile use: bin i holds (edges[i-1], edges[i]]
    cur = np.bincount(np.searchsorted(edges, present, side="left"), minlength=edges.size + 1)
    text = [f"{e:.4g}" for e in edges]
    labels = (
        [f"≤ {text[0]}", *(f"({a}, {b}]" for a, b in itertools.pairwise(text)), f"> {text[-1]}"]
        if text
        else ["all values"]
    )
    return labels, np.asarray(ref["bin_counts"], dtype=float), cur.astype(float)


def _categorical_counts(
    ref: Mapping[str, Any], values: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Categories, reference counts and current counts: unseen categories pooled with
    ``__other__`` as drift.py does; past :data:`_MAX_BARS`, the smallest pooled there too."""
    known = {str(k): float(v) for k, v in ref["frequencies"].items()}
    values = np.asarray(values).astype(str)
    cats, counts = np.unique(values[values != MISSING_CATEGORY], return_counts=True)
    current = dict.fromkeys(known, 0.0)
    for c, k in zip(cats.tolist(), counts.tolist(), strict=True):
        key = c if c in known else OTHER
        current[key] = current.get(key, 0.0) + k
    names = [n for n in known if n != OTHER]
    a = np.array([known[n] for n in names])
    b = np.array([current[n] for n in names])
    # rank by the larger of the two shares, so a category that surged is drawn by name
    rank = np.maximum(a / max(sum(known.values()), 1), b / max(sum(current.values()), 1))
    keep = sorted(np.argsort(-rank, kind="stable")[:_MAX_BARS].tolist())
    pooled = (known.get(OTHER, 0.0) + a.sum() - a[keep].sum(),
              current.get(OTHER, 0.0) + b.sum() - b[keep].sum())  # fmt: skip
    labels = [names[i] for i in keep]
    ref_counts, cur_counts = list(a[keep]), list(b[keep])
    if any(pooled):
        labels.append(OTHER)
        ref_counts.append(pooled[0])
        cur_counts.append(pooled[1])
    return labels, np.array(ref_counts), np.array(cur_counts)


def _bar_chart(title: str, labels: Sequence[str], shares: Mapping[str, np.ndarray]) -> str:
    """An SVG of paired bars: per label, one bar per entry of ``shares`` (name → one share
    per label, each summing to 1)."""
    top = _nice_max(max(float(np.max(s, initial=0.0)) for s in shares.values()))
    iw, ih = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    group = iw / max(len(labels), 1)
    width = group * 0.8 / len(shares)

    def y(v: float) -> float:
        return _PAD_T + ih * (1 - v / top)

    parts = [svg_open(title, _W, _H)]
    for i in range(6):  # grid and y labels: fifths of a _nice_max are round numbers
        v = top * i / 5
        parts.append(f'<line x1="{_PAD_L}" x2="{_PAD_L + iw}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     'stroke="#e5e5e5"/>')  # fmt: skip
        parts.append(f'<text x="{_PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{100 * v:.3g}%</text>')  # fmt: skip
    for n, name in enumerate(shares):  # legend, above the plot
        kx = _PAD_L + iw - 200 + 100 * n
        parts.append(f'<rect x="{kx}" y="8" width="12" height="12" fill="{_COLORS[name]}"/>'
                     f'<text x="{kx + 16}" y="18" font-size="12">{name}</text>')  # fmt: skip
    for i, label in enumerate(labels):
        x0 = _PAD_L + group * i + group * 0.1
        tip = ", ".join(f"{name} {s[i]:.1%}" for name, s in shares.items())
        parts.append(f"<g><title>{_e(label)}: {tip}</title>")
        for n, (name, s) in enumerate(shares.items()):
            parts.append(f'<rect class="{name}" x="{x0 + width * n:.1f}" y="{y(s[i]):.2f}" '
                         f'width="{width:.1f}" height="{ih * s[i] / top:.2f}" '
                         f'fill="{_COLORS[name]}"/>')  # fmt: skip
        lx, ly = _PAD_L + group * (i + 0.5), _PAD_T + ih + 14
        short = label if len(label) <= 20 else label[:19] + "…"
        parts.append(f'<text x="{lx:.1f}" y="{ly}" font-size="11" text-anchor="end" '
                     f'transform="rotate(-35 {lx:.1f} {ly})">{_e(short)}</text></g>')  # fmt: skip
    parts.append(f'<line x1="{_PAD_L}" x2="{_PAD_L + iw}" y1="{_PAD_T + ih}" '
                 f'y2="{_PAD_T + ih}" stroke="#999"/></svg>')  # fmt: skip
    return "\n".join(parts)


def _figure(c: ColumnDrift, ref: Mapping[str, Any], values: np.ndarray, anchor: str) -> str:
    missing = float(ref["missing_rate"])
    rates = f"missing: reference {missing:.1%}, current {missing + c.missing_change:.1%}"
    if c.kind == "categorical":
        labels, a, b = _categorical_counts(ref, values)
        what = "share of each category (categories the reference never saw count as __other__)"
    elif "bin_edges" in ref:
        labels, a, b = _numeric_counts(ref, values)
        what = "share in each of the reference's decile bins"
    else:  # an all-missing reference column: nothing to bin
        labels, what = [], "the reference has no values to draw"
    chart = ""
    if labels:
        shares = {"reference": a / max(a.sum(), 1.0), "current": b / max(b.sum(), 1.0)}
        chart = _bar_chart(f"{c.column}: reference vs current", labels, shares)
        what += ", of the non-missing values"
    return (
        f'<figure class="chart" id="{anchor}" data-column="{_e(c.column)}">'
        f"<h3>{_e(c.column)} ({_e(c.kind)})</h3>{chart}"
        f"<figcaption>{_e(what)}; {_e(rates)}</figcaption></figure>"
    )


def _row(c: ColumnDrift, anchor: str | None) -> str:
    cells = [
        c.kind,
        _MEASURES.get(c.magnitude, c.magnitude),
        f"{c.statistic:.3f}",
        f"{c.threshold:g}",
        "—" if c.psi is None else f"{c.psi:.3f}",
        f"{c.missing_change:+.3f}",
        f"{min(c.adjusted.values()):.2g}" if c.adjusted else "—",
        "drift" if c.drifted else "ok",
    ]
    name = _e(c.column) if anchor is None else f'<a href="#{anchor}">{_e(c.column)}</a>'
    body = f"<td>{name}</td>" + "".join(f"<td>{_e(x)}</td>" for x in cells)
    return f'<tr class="drift">{body}</tr>' if c.drifted else f"<tr>{body}</tr>"


def _header(result: DatasetDrift, extra_rows: Sequence[tuple[str, str]]) -> str:
    named = result.drifted_columns
    verdict = (
        f"Drift in {len(named)} of {len(result.columns)} columns: {', '.join(named)}"
        if named
        else f"No drift in {len(result.columns)} columns"
    )
    rows = result.columns[0].rows if result.columns else 0
    facts = [
        ("rows compared", f"{rows:,}"),
        ("q (false discovery rate)", f"{result.q:g}"),
        *extra_rows,
    ]
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    return f'<p class="verdict">{_e(verdict)}</p><table>{table}</table>'


def render_html(
    title: str,
    reference: Mapping[str, Mapping[str, Any]],
    current: Mapping[str, np.ndarray],
    result: DatasetDrift,
    *,
    extra_rows: Sequence[tuple[str, str]] = (),
) -> str:
    """The page for ``result``, the outcome of :func:`tandem.monitoring.drift.drift` on
    ``reference`` (column → its reference statistics) and ``current`` (column → its coerced
    values, shape (n_rows,)). ``extra_rows`` are (label, value) lines added to the header,
    e.g. ``("model", "churn:3")``. Every drifted column is charted; when none drifted, the
    :data:`_CLOSEST` closest to their threshold are, and the heading says so.

    Example:
        >>> from tandem.monitoring.drift import drift
        >>> ref = {"x": {"kind": "numeric", "count": 4, "missing_rate": 0.0, "std": 0.5,
        ...              "bin_edges": [0.5], "bin_counts": [2, 2]}}
        >>> cur = {"x": np.array([0.0, 1.0, 1.0, 1.0])}
        >>> page = render_html("drift of may.parquet", ref, cur, drift(ref, cur))
        >>> page.count("<svg")  # nothing drifted: the closest column is drawn
        1
    """
    drifted = [c for c in result.columns if c.drifted]
    if drifted:
        charted, note = drifted, "Drifted columns: reference vs current"
    else:
        charted = sorted(result.columns, key=lambda c: c.statistic / c.threshold, reverse=True)
        charted = charted[:_CLOSEST]
        note = (
            f"No column drifted; the {len(charted)} closest to their threshold "
            "(statistic / threshold), reference vs current"
        )
    anchors = {c.column: f"chart-{i}" for i, c in enumerate(charted)}
    header = ["column", "kind", "statistic", "value", "threshold", "PSI", "missing Δ",
              "min adj. p", "verdict"]  # fmt: skip
    table = (
        "<h2>Columns</h2><table><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in header)
        + "</tr>"
        + "".join(_row(c, anchors.get(c.column)) for c in result.columns)
        + "</table>"
    )
    rule = (
        f"A column drifts when a p-value, corrected with Benjamini–Hochberg over every test of "
        f"every column, is under q and its statistic is over its threshold, or when its missing "
        f"rate changed significantly by more than {THRESHOLDS['missing_rate']:g}."
    )
    figures = "".join(
        _figure(c, reference[c.column], current[c.column], anchors[c.column]) for c in charted
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}"
        f"</title><style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>"
        + _header(result, extra_rows)
        + table
        + f"<p><small>{_e(rule)}</small></p>"
        + (f"<h2>{_e(note)}</h2>{figures}" if charted else "")
        + "</body></html>\n"
    )


def write_html(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`tandem.ledger.html.write_html`).

    Raises:
        UsageError: ``path`` is a folder, its folder does not exist or cannot be written to.
    """
    path = Path(path)
    try:
        ledger_html.write_html(path, text)
    except OSError as exc:
        raise UsageError(
            f"--html {path}: cannot write there ({exc.strerror or exc}); give a path in a "
            "folder you can write to"
        ) from exc
