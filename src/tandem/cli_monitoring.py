"""The monitoring loop's commands: ``monitor``, ``feedback``, ``retrain`` (registered on the
``tandem`` app by :mod:`tandem.cli`, which stays the one entry point)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tandem.cli import JsonOpt, _print_json, app, err, out
from tandem.errors import UsageError
from tandem.registry import Registry

RefArg = Annotated[
    str, typer.Argument(help="The model: NAME (its newest version), NAME:VERSION or NAME@ALIAS.")
]


@app.command()
def monitor(
    ref: RefArg,
    current: Annotated[
        Path | None,
        typer.Option("--current", help="Production rows: CSV, Parquet, JSONL or a folder."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Check the prediction log's rows of the last 30m, 24h, 7d…"),
    ] = None,
    window: Annotated[
        str, typer.Option(help="Width of the realized-performance windows (e.g. 1h, 1d).")
    ] = "1d",
    q: Annotated[float, typer.Option(help="False discovery rate of the column tests.")] = 0.05,
    html: Annotated[
        Path | None, typer.Option(help="Also write the report, with its charts, to this file.")
    ] = None,
    retrain: Annotated[
        bool,
        typer.Option(
            help="On drift or decay, retrain on the labeled rows of the log (see `retrain`)."
        ),
    ] = False,
    promote: Annotated[
        bool, typer.Option(help="With --retrain: promote the challenger if it is better.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Drift and decay of production rows against what the model's Bundle froze at training."""
    from tandem.monitoring.monitor import check
    from tandem.monitoring.performance import parse_duration

    if (current is None) == (since is None):
        raise UsageError("give the rows to check: --current FILE or --since DURATION (one of them)")
    with Registry() as reg:
        report = check(
            reg, ref, current=current, since=None if since is None else parse_duration(since),
            q=q, window=parse_duration(window),
        )  # fmt: skip
        if html is not None:
            _write_monitor_html(report, html)
        retrained = None
        if retrain and (report.drifted or (report.performance and report.performance.alarm)):
            retrained = _retrain_from_log(reg, report, since, promote)
    if as_json:
        _print_json(
            report.to_json()
            | ({"html": str(html)} if html else {})
            | ({"retrain": retrained.to_json()} if retrained else {})
        )
        return
    _render_monitor(report)
    if html is not None:
        out.print(f"report written to {html}", highlight=False)
    if retrained is not None:
        _render_retrain(retrained)
    elif retrain:
        out.print("nothing to retrain for: no drift, no decay", highlight=False)


def _retrain_from_log(reg: Registry, report: Any, since: str | None, promote: bool) -> Any:
    from tandem.monitoring.performance import parse_duration
    from tandem.monitoring.retrain import retrain, training_rows_from_log

    if since is None:
        raise UsageError(
            "--retrain with --current: retrain with `tandem retrain NAME --data FILE` instead; "
            "--retrain uses the labelled rows of the prediction log (--since)"
        )
    version = reg.get(report.model)
    data = training_rows_from_log(reg, version, parse_duration(since))
    evidence = {"trigger": {"drifted_columns": report.result.drifted_columns,
                            "alarm": report.performance.alarm if report.performance else None,
                            "source": report.source}}  # fmt: skip
    return retrain(
        reg, version.name, data, alias=_champion_alias(version), promote=promote, evidence=evidence
    )


def _champion_alias(version: Any) -> str:
    return (
        "champion" if "champion" in version.aliases or not version.aliases else version.aliases[0]
    )


def _write_monitor_html(report: Any, path: Path) -> None:
    from tandem.monitoring.html import render_html, write_html

    extra = [("model", report.model), ("rows from", report.source)]
    if report.domain is not None:
        extra.append(("domain classifier", _domain_text(report.domain)))
    if report.performance is not None:
        extra.append(("realized", _metrics_text(report.performance.overall)))
        extra.append(("decay alarm", report.performance.alarm or "none"))
    extra += [("note", n) for n in report.notes]
    title = f"drift of {report.source} against {report.model}"
    write_html(
        path, render_html(title, report.reference, report.current, report.result, extra_rows=extra)
    )


def _domain_text(domain: Any) -> str:
    top = ", ".join(f"{c} ({v:.3f})" for c, v in domain.top_features[:3])
    verdict = "drift" if domain.drifted else "ok"
    return f"AUC {domain.auc:.3f} (p {domain.p_value:.2g}, {domain.rows_each:,} rows a side): {verdict}; separating most: {top}"


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _render_monitor(report: Any) -> None:
    shown = Table(title=f"drift of {report.source} ({report.rows:,} rows) against {report.model}")
    for col in ("column", "measure", "value", "threshold", "PSI", "missing Δ", "min adj. p",
                "verdict"):  # fmt: skip
        shown.add_column(col)
    for c in report.result.columns:
        shown.add_row(
            c.column, c.magnitude.replace("wasserstein_sd", "W1/sd").replace("jensen_shannon", "JS"),
            f"{c.statistic:.3f}", f"{c.threshold:g}",
            "—" if c.psi is None else f"{c.psi:.3f}", f"{c.missing_change:+.3f}",
            f"{min(c.adjusted.values()):.2g}", "drift" if c.drifted else "ok",
        )  # fmt: skip
    out.print(shown)
    if report.domain is not None:
        out.print(
            f"all columns together: domain classifier {_domain_text(report.domain)}",
            highlight=False,
        )
    perf = report.performance
    if perf is not None:
        if perf.windows:
            table = Table(title=f"realized performance ({perf.rows:,} labelled rows)")
            table.add_column("window")
            table.add_column("rows", justify="right")
            for k in perf.windows[0].metrics:
                table.add_column(k, justify="right")
            for w in perf.windows:
                table.add_row(str(w.start.astype("datetime64[m]")), f"{w.rows:,}",
                              *(f"{v:.4f}" for v in w.metrics.values()))  # fmt: skip
            out.print(table)
        out.print(
            f"realized: {_metrics_text(perf.overall)} on {perf.rows:,} labelled rows "
            f"(at training: {_metrics_text(perf.at_training)}); decay alarm: {perf.alarm or 'none'}",
            highlight=False,
        )
    for note in report.notes:
        out.print(f"note: {note}", highlight=False)
    verdict = report.result.drifted_columns
    if report.domain is not None and report.domain.drifted:
        verdict = [*verdict, "(all columns together)"]
    out.print(f"drift in {', '.join(verdict)}" if verdict else "no drift", highlight=False)


@app.command()
def feedback(
    name: Annotated[str, typer.Argument(help="The model (NAME) whose predictions are labelled.")],
    labels: Annotated[Path, typer.Option(help="CSV, Parquet or JSONL of true values.")],
    key: Annotated[
        str | None,
        typer.Option(help="Join on this logged input column instead of request_id (+ row)."),
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option(help="The true values' column (default: the model's target, else 'label')."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Join late ground truth to the logged predictions, by request id or by a key column."""
    from tandem.monitoring.feedback import add_labels

    with Registry() as reg:
        result = add_labels(reg, name, labels, key=key, label_column=label_column)
    if as_json:
        _print_json(result.to_json())
        return
    out.print(
        f"{result.received:,} label(s) read; {result.matched_rows:,} logged prediction(s) of "
        f"{result.model} labelled; {result.unmatched:,} label(s) matched no logged prediction",
        highlight=False,
    )
    if result.unmatched:
        err.print(
            "labels that match nothing are not kept: check the request ids (or --key), and that "
            "the predictions were logged (the log may keep only a sample)",
            highlight=False,
        )


@app.command()
def retrain(
    name: Annotated[str, typer.Argument(help="The model (NAME) to retrain.")],
    data: Annotated[
        list[Path],
        typer.Option("--data", help="Fresh labeled rows, oldest first (repeat for more files)."),
    ],
    promote: Annotated[
        bool, typer.Option(help="Move the alias to the challenger if it is better.")
    ] = False,
    alias: Annotated[str, typer.Option(help="The champion's alias.")] = "champion",
    holdout: Annotated[
        float, typer.Option(help="Most recent share of --data that judges both models.")
    ] = 0.25,
    with_old: Annotated[
        bool, typer.Option(help="Also train on the champion's own training data.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the champion's recipe on fresh data; promote only a challenger that is better."""
    from tandem.monitoring.retrain import retrain as run_retrain

    with Registry() as reg:
        result = run_retrain(
            reg, name, data, alias=alias, promote=promote, holdout=holdout, with_old=with_old
        )
    if as_json:
        _print_json(result.to_json())
        return
    _render_retrain(result)


def _render_retrain(result: Any) -> None:
    table = Table(title=f"champion vs challenger on the same {result.holdout_rows:,} recent rows")
    table.add_column("")
    table.add_column("version")
    for k in result.champion_metrics:
        table.add_column(k, justify="right")
    table.add_row(
        "champion", result.champion.ref, *(f"{v:.4f}" for v in result.champion_metrics.values())
    )
    table.add_row("challenger", result.challenger.ref,
                  *(f"{v:.4f}" for v in result.challenger_metrics.values()))  # fmt: skip
    out.print(table)
    lo, hi = result.interval
    out.print(
        f"{result.metric} difference {result.difference:+.4f}, {result.confidence:.0%} interval "
        f"[{lo:+.4f}, {hi:+.4f}] (paired bootstrap)",
        highlight=False,
    )
    out.print(f"decision: {result.decision.reason}", highlight=False)
    if result.promoted:
        out.print(
            f"{result.champion.name}@{result.decision.alias} → {result.challenger.ref}; roll back "
            f"with `tandem promote {result.champion.ref}`",
            highlight=False,
        )
