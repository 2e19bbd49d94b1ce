"""``tandem optimize`` (registered on the ``tandem`` app by :mod:`tandem.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tandem.cli import JsonOpt, _key_values, _print_json, app, out, print_whole
from tandem.cli_monitoring import RefArg


@app.command()
def optimize(
    ref: RefArg,
    quantize: Annotated[
        str | None,
        typer.Option(help="int8-dynamic (MLPs, transformers) or int8-static (QDQ, CNNs)."),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="Rows to calibrate int8-static (default: the Bundle's reference sample)."
        ),
    ] = None,
    prune: Annotated[
        float | None,
        typer.Option(
            help="Share (0-1) of each hidden layer's neurons to remove from an MLP, then fine-tune."
        ),
    ] = None,
    fine_tune_epochs: Annotated[
        int | None,
        typer.Option(help="At most this many fine-tuning epochs after --prune (0: none; 20)."),
    ] = None,
    distill: Annotated[
        str | None,
        typer.Option(
            help="Teach a small MLP student: KEY=VALUE,... of hidden, temperature, alpha, "
            "dropout and loop settings (max_epochs, lr, ...); 'default' for the defaults."
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
    """Build a faster candidate of a model (one of --quantize, --prune, --distill); register
    it only if measured faster here at batch 1 and 256 and within --max-loss on the holdout
    (exit 1 when refused)."""
    from tandem.optimize import optimize as run
    from tandem.optimize.quantize import has_vnni

    settings = None
    if distill is not None:
        spec = distill.strip()
        settings = {} if spec in ("", "default") else _key_values(spec.split(","), "--distill")
    result = run(ref, quantize_method=quantize, calibration=calibration, prune=prune,
                 fine_tune_epochs=fine_tune_epochs, distill=settings, data=data,
                 max_loss=max_loss)  # fmt: skip
    report = result.report
    if as_json:
        _print_json({"from": result.source.ref,
                     "registered": result.version.ref if result.version else None,
                     **report.to_json(), "retrained": result.retrained})  # fmt: skip
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
        done = result.retrained
        if "hidden_after" in done:
            out.print(f"hidden layers {done['hidden_before']} → {done['hidden_after']}, "
                      f"fine-tuned {done['fine_tune_epochs']} epochs", highlight=False)  # fmt: skip
        elif "teacher" in done:
            out.print(f"student hidden layers {done['hidden']}, {done['epochs']} epochs, taught by "
                      f"{done['teacher']['model']} ({done['teacher']['family']})",
                      highlight=False)  # fmt: skip
        else:
            out.print(f"CPU: {'VNNI' if has_vnni(report.cpu) else 'no VNNI (int8 products via AVX2, 7-bit weights)'}",
                      highlight=False)  # fmt: skip
        if result.version is not None:
            out.print(f"[bold green]accepted[/]: registered {result.version.ref}")
        else:
            out.print("[bold red]refused[/]: " + "; ".join(report.reasons), highlight=False)
    if result.version is None:
        raise typer.Exit(1)
