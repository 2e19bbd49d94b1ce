"""``tandem optimize`` (registered on the ``tandem`` app by :mod:`tandem.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tandem.cli import JsonOpt, _print_json, app, out, print_whole
from tandem.cli_monitoring import RefArg


@app.command()
def optimize(
    ref: RefArg,
    quantize: Annotated[
        str, typer.Option(help="int8-dynamic (MLPs, transformers) or int8-static (QDQ, CNNs).")
    ],
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="Rows to calibrate int8-static (default: the Bundle's reference sample)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Labeled holdout rows (default: the version's test split, rebuilt)."),
    ] = None,
    max_loss: Annotated[
        float, typer.Option(help="Points of accuracy (or R²) the candidate may lose.")
    ] = 0.5,
    as_json: JsonOpt = False,
) -> None:
    """Build a faster candidate of a model; register it only if measured faster here at
    batch 1 and 256 and within --max-loss on the holdout (exit 1 when refused)."""
    from tandem.optimize import optimize as run
    from tandem.optimize.quantize import has_vnni

    result = run(ref, quantize_method=quantize, calibration=calibration, data=data,
                 max_loss=max_loss)  # fmt: skip
    report = result.report
    if as_json:
        _print_json({"from": result.source.ref,
                     "registered": result.version.ref if result.version else None,
                     **report.to_json()})  # fmt: skip
    else:
        table = Table(title=f"{report.technique} of {result.source.ref}, measured here")
        for column in ("", "before", "after", "change"):
            table.add_column(column, justify="right" if column else "left")
        for row in report.rows():
            table.add_row(*row)
        print_whole(table)
        if report.batch_dependent_rows is not None:
            out.print(f"rows whose class differs between batch 1 and batch 256: "
                      f"{report.batch_dependent_rows}", highlight=False)  # fmt: skip
        out.print(f"CPU: {'VNNI' if has_vnni(report.cpu) else 'no VNNI (int8 products via AVX2, 7-bit weights)'}",
                  highlight=False)  # fmt: skip
        if result.version is not None:
            out.print(f"[bold green]accepted[/]: registered {result.version.ref}")
        else:
            out.print("[bold red]refused[/]: " + "; ".join(report.reasons), highlight=False)
    if result.version is None:
        raise typer.Exit(1)
