"""The report as one self-contained HTML file: the tables, and the lifetime projection drawn
as cumulative cost curves split by phase.

The charts are inline SVG written here, not a plotting library: a file that opens anywhere
(no script, no network, no fonts to fetch) needs only polylines and text, and a plotting
package would add tens of megabytes to an install for two line charts.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tandem.errors import UsageError
from tandem.ledger.report import Projection, Report, money_text

__all__ = ["render_html", "write_html"]

_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 720, 320, 78, 150, 20, 44
_COLORS = {"training": "#d95f02", "inference": "#1b9e77", "total": "#555555"}


def _nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def svg_open(title: str, width: int, height: int) -> str:
    """The opening of an inline SVG chart, titled for screen readers and tooltips."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(title)}" width="{width}" height="{height}">'
        f"<title>{html.escape(title)}</title>"
    )


def line_chart(
    title: str, days: Sequence[int], series: Mapping[str, Sequence[float]],
    label: Callable[[float], str],
    marker: int | None = None,
) -> str:  # fmt: skip
    """An SVG chart of ``series`` (name → one value per day) against ``days``; ``label``
    writes a value on the y axis."""
    top = _nice_max(max((max(v) for v in series.values()), default=1.0))
    last = max(days[-1], 1)
    iw, ih = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def x(d: float) -> float:
        return _PAD_L + iw * d / last

    def y(v: float) -> float:
        return _PAD_T + ih * (1 - v / top)

    parts = [svg_open(title, _W, _H)]
    for i in range(5):  # grid and y labels
        v = top * i / 4
        parts.append(f'<line x1="{_PAD_L}" x2="{_PAD_L + iw}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     'stroke="#e5e5e5"/>')  # fmt: skip
        parts.append(f'<text x="{_PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{html.escape(label(v))}</text>')  # fmt: skip
    for i in range(6):  # x labels
        d = last * i / 5
        parts.append(f'<text x="{x(d):.1f}" y="{_PAD_T + ih + 16}" text-anchor="middle" '
                     f'font-size="11">{d:.0f}</text>')  # fmt: skip
    parts.append(f'<text x="{_PAD_L + iw / 2}" y="{_H - 6}" text-anchor="middle" '
                 'font-size="12">days in production</text>')  # fmt: skip
    parts.append(f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{iw}" height="{ih}" fill="none" '
                 'stroke="#999"/>')  # fmt: skip
    for n, (name, values) in enumerate(series.items()):
        color = _COLORS.get(name.split()[0], "#333")
        points = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in zip(days, values, strict=True))
        dash = ' stroke-dasharray="5,4"' if name.startswith("total") else ""
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} '
                     f'points="{points}"><title>{html.escape(name)}</title></polyline>')  # fmt: skip
        ly = _PAD_T + 14 + 18 * n
        parts.append(f'<line x1="{_PAD_L + iw + 12}" x2="{_PAD_L + iw + 32}" y1="{ly - 4}" '
                     f'y2="{ly - 4}" stroke="{color}" stroke-width="2"{dash}/>')  # fmt: skip
        parts.append(f'<text x="{_PAD_L + iw + 38}" y="{ly}" font-size="12">'
                     f"{html.escape(name)}</text>")  # fmt: skip
    if marker is not None:
        parts.append(f'<line x1="{x(marker):.1f}" x2="{x(marker):.1f}" y1="{_PAD_T}" '
                     f'y2="{_PAD_T + ih}" stroke="#7570b3" stroke-dasharray="2,3"/>')  # fmt: skip
        parts.append(f'<text x="{x(marker) + 4:.1f}" y="{_PAD_T + 12}" font-size="11" '
                     f'fill="#7570b3">inference overtakes training: day {marker}</text>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _charts(p: Projection, currency: str) -> str:
    money = {
        "training": p.training_money,
        "inference": p.inference_money,
        "total": [a + b for a, b in zip(p.training_money, p.inference_money, strict=True)],
    }
    carbon = {
        "training": [g / 1000 for g in p.training_carbon_g],
        "inference": [g / 1000 for g in p.inference_carbon_g],
    }
    return (
        "<h2>Cumulative cost over the model's life</h2>"
        + line_chart(
            "cumulative cost by phase",
            p.days,
            money,
            lambda v: money_text(v, currency),
            p.crossover_day,
        )
        + "<h2>Cumulative carbon</h2>"
        + line_chart("cumulative carbon by phase", p.days, carbon, lambda v: f"{v:,.3g} kg CO2e")
    )


def render_html(
    report: Report, table: Sequence[tuple[str, ...]], projection: Sequence[tuple[str, ...]]
) -> str:
    """The page: ``table`` (the training-vs-inference rows, a header first) and
    ``projection`` (its rows, a header first) as rendered for the terminal, plus the charts."""
    title = f"tandem report — {report.name}:{report.version}"
    sections = [_table("Training vs inference, measured", table[0], table[1:])]
    if report.projection is not None:
        sections.append(_table("Lifetime projection", projection[0], projection[1:]))
        sections.append(_charts(report.projection, report.currency))
    if report.notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
        sections.append(f"<h2>Notes</h2><ul>{items}</ul>")
    prices = ", ".join(report.prices["sources"])
    style = (
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}h2{font-size:1.1em;margin-top:1.5em}"
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(sections)
        + f"<p><small>Prices: {html.escape(prices)}.</small></p></body></html>\n"
    )


def write_html(path: Path, page: str) -> None:
    """Write ``page`` to ``path`` atomically (a reader never sees half a file)."""
    if path.is_dir():
        raise UsageError(
            f"--html {path} is a folder: give a file name, e.g. {path / 'report.html'}"
        )
    if not path.parent.is_dir():
        raise UsageError(f"--html {path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
