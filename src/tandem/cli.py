"""The ``tandem`` command: parses, calls the Python API, renders with Rich.

Exit codes: 0 success, 1 failure, 2 bad usage or input. Errors print one line, no traceback
(set ``TANDEM_DEBUG=1`` to see it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tandem.errors import TandemError, UsageError
from tandem.registry import ModelVersion, Registry, parse_ref

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, freeze, register and predict with ML models; measure what each phase costs.",
)
models_app = typer.Typer(
    help="List, show and delete registered models.", invoke_without_command=True
)
app.add_typer(models_app, name="models")

out = Console()
# messages on stderr are not wrapped: a path or a name cut in two cannot be searched or copied
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@contextmanager
def _bar(enabled: bool, columns: list[Any], start: Callable[[Progress], Any]) -> Iterator[Any]:
    """A transient progress bar on stderr (nothing when not ``enabled``); yields what
    ``start(bar)`` returns: the callback that moves it."""
    if not enabled:
        yield None
        return
    with Progress(*columns, console=err, transient=True) as bar:
        yield start(bar)


def _progress(enabled: bool) -> AbstractContextManager[Any]:
    """A bar over the steps of a training run."""

    def start(bar: Progress) -> Callable[[Any], None]:
        task = bar.add_task("starting", total=1)

        def update(event: Any) -> None:
            bar.update(task, total=event.total, completed=event.step, description=event.message)

        return update

    columns = [TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()]  # fmt: skip
    return _bar(enabled, columns, start)


def _leaderboard(result: Any) -> Table:
    # training is loaded by now; other commands skip these imports
    from tandem.models.auto import CV_FOLDS
    from tandem.training.metrics import PRIMARY

    metric = PRIMARY[result.task]
    cv = any(c.cv for c in result.leaderboard)
    ranked = f"{CV_FOLDS}-fold cross-validation" if cv else "validation"
    table = Table(title=f"leaderboard ({metric}; picked on {ranked})")
    for col in (
        "family",
        *([f"cv {metric}"] if cv else []),
        f"validation {metric}",
        f"test {metric}",
        "seconds",
        "",
    ):
        table.add_column(col)
    for c in result.leaderboard:
        scores = [c.cv.get(metric), c.validation.get(metric), c.test.get(metric)][0 if cv else 1 :]
        cells = ["-" if v is None else f"{v:.4f}" for v in scores]
        note = f"failed: {c.error[:50]}" if c.error else ("← chosen" if c.chosen else "")
        table.add_row(c.family, *cells, f"{c.seconds:.1f}", note)
    return table


def _key_values(pairs: list[str], option: str) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that reads as JSON (256, 0.1, true) is taken as such."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} takes KEY=VALUE; got '{pair}'")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


@app.command()
def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="CSV, Parquet or JSONL file, a folder of parts, or a folder of images (one "
            "sub-folder per class)."
        ),
    ],
    name: Annotated[str, typer.Option(help="Registry name of the model.")],
    target: Annotated[
        str | None,
        typer.Option(help="The column to predict; leave it out to learn from the rows alone."),
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            help="auto, classification or regression; without --target clustering, "
            "projection or anomaly."
        ),
    ] = "auto",
    model: Annotated[
        str,
        typer.Option(
            help="auto, linear, gbdt or mlp; without --target kmeans (the default), pca or "
            "autoencoder; cnn for images, encoder for text."
        ),
    ] = "auto",
    kind: Annotated[
        str,
        typer.Option(
            help="auto (from the data), table, image (a folder of class folders, or a column "
            "of image bytes), text (one column of texts) or unsupervised (no target)."
        ),
    ] = "auto",
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds for fitting, shared by the candidates.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and the models.")] = 0,
    ignore: Annotated[
        list[str] | None, typer.Option(help="A column that is not a feature (repeatable).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="A setting of the chosen family, KEY=VALUE (repeatable), e.g. hidden=256, "
            "schedule=one-cycle, clip_norm=1, monitor=roc_auc; clusters=5; image_size=32; "
            "max_tokens=128, chunks=2, fine_tune_layers=2."
        ),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="mlp: fp32, bf16 (CPU or GPU) or fp16 (GPU, gradient scaling).")
    ] = "fp32",
    device: Annotated[str, typer.Option(help="mlp: auto (a GPU if any), cpu or cuda.")] = "auto",
    engine: Annotated[
        str, typer.Option(help="mlp: local (one process) or ray (Ray Train, data parallel).")
    ] = "local",
    workers: Annotated[int, typer.Option(help="Data-parallel workers with --engine ray.")] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="A Ray cluster to join (default: a local instance).")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="mlp: save the loop's state every N optimizer steps.")
    ] = None,
    checkpoint_seconds: Annotated[
        float, typer.Option(help="mlp: save the loop's state every S seconds (0: not by time).")
    ] = 60.0,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run of the same data and recipe.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on DATA, freeze it into a Bundle and register it as a new version."""
    from tandem.training.loop import TorchOptions
    from tandem.training.train import CheckpointOptions
    from tandem.training.train import train as run_train

    options = TorchOptions(
        device=cast(Any, device), precision=cast(Any, precision), engine=cast(Any, engine),
        workers=workers, ray_address=ray_address,
    )  # fmt: skip
    saving = CheckpointOptions(
        every_steps=checkpoint_every, every_s=checkpoint_seconds or None, resume=resume
    )
    with _progress(not as_json) as update:
        result = run_train(
            data,
            target=target,
            name=name,
            task=cast(Any, task),
            model=cast(Any, model),
            time_budget=time_budget,
            seed=seed,
            ignore=ignore or (),
            params=_key_values(param or [], "--param"),
            on_progress=update,
            torch=options,
            checkpoints=saving,
            kind=cast(Any, kind),
        )
    if as_json:
        _print_json(
            {
                "model": result.version.ref,
                "task": result.task,
                "family": result.family,
                "metrics": result.version.metrics,
                "leaderboard": [c.to_json() for c in result.leaderboard],
                "profile": result.profile.to_json(),
                "parity_max_abs": result.parity_max_abs,
            }
        )
        return
    out.print(_leaderboard(result))
    p = result.profile
    out.print(
        f"registered [bold]{result.version.ref}[/] ({result.family}, {result.task}) in {p.wall_seconds:.1f} s wall, {p.cpu_seconds:.1f} CPU s, peak {p.peak_rss_mb:.0f} MB"
    )


def _version_json(v: ModelVersion) -> dict[str, Any]:
    return {
        "name": v.name,
        "version": v.version,
        "created_at": v.created_at.isoformat(),
        "task": v.task,
        "family": v.family,
        "metrics": v.metrics,
        "aliases": list(v.aliases),
        "tags": v.tags,
        "data_fingerprint": v.data_fingerprint,
        "parent_version": v.parent_version,
        "path": str(v.path),
    }


@models_app.callback()
def models_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List registered models (with no sub-command)."""
    if ctx.invoked_subcommand is not None:
        return
    with Registry() as reg:
        summaries = reg.list_models()
    if as_json:
        _print_json(
            [
                {
                    "name": s.name,
                    "latest_version": s.latest_version,
                    "versions": s.n_versions,
                    "aliases": s.aliases,
                    "updated_at": s.updated_at.isoformat(),
                }
                for s in summaries
            ]
        )
        return
    if not summaries:
        out.print(
            "no models registered yet: train one with `tandem train DATA --target COL --name NAME`"
        )
        return
    table = Table(title="models")
    for col in ("name", "latest", "versions", "aliases", "updated"):
        table.add_column(col)
    for s in summaries:
        aliases = ", ".join(f"@{a}→{v}" for a, v in sorted(s.aliases.items()))
        table.add_row(
            s.name,
            str(s.latest_version),
            str(s.n_versions),
            aliases,
            s.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one model version: metrics, signature, lineage, files."""
    from tandem.bundle import load_bundle

    with Registry() as reg:
        version = reg.get(ref)
        others = reg.list_versions(version.name)
        decisions = reg.decisions(version.name, version.version)
    manifest = load_bundle(version.path, expected_digest=version.digest).manifest
    if as_json:
        _print_json(
            {**_version_json(version), "manifest": manifest.to_json(),
             "decisions": [d.__dict__ | {"decided_at": d.decided_at.isoformat()} for d in decisions]}
        )  # fmt: skip
        return
    table = Table(title=f"{version.ref}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("created", version.created_at.isoformat(timespec="seconds"))
    table.add_row(
        "task / family",
        f"{version.task} / {version.family}  "
        + (f"(target '{manifest.target}')" if manifest.target else "(no target)"),
    )
    table.add_row("aliases", ", ".join(version.aliases) or "-")
    table.add_row("test metrics", ", ".join(f"{k} {v:.4f}" for k, v in version.metrics.items()))
    table.add_row("inputs", ", ".join(f"{c.name}:{c.kind}" for c in manifest.inputs))
    if manifest.classes:
        table.add_row("classes", ", ".join(map(str, manifest.classes)))
    table.add_row(
        "data", f"{version.data_fingerprint}  rows {manifest.details.get('data', {}).get('rows')}"
    )
    prof = manifest.details.get("training", {}).get("profile", {})
    if prof:
        table.add_row(
            "training",
            f"{prof['wall_seconds']:.1f} s wall, {prof['cpu_seconds']:.1f} CPU s, peak {prof['peak_rss_mb']:.0f} MB",
        )
    table.add_row("parent", str(version.parent_version or "-"))
    table.add_row("tags", ", ".join(f"{k}={v}" for k, v in version.tags.items()) or "-")
    table.add_row("bundle", f"{version.path}  (verified, manifest sha256 {version.digest[:12]}…)")
    for d in decisions:
        table.add_row(
            f"decision {d.decided_at:%Y-%m-%d %H:%M}",
            f"{d.kind}: {d.name}:{d.challenger_version} "
            + (f"vs {d.name}:{d.champion_version} " if d.champion_version else "")
            + f"for @{d.alias}: {d.reason}",
        )
    table.add_row(
        "versions",
        ", ".join(
            f"{v.version}" + (f" ({', '.join('@' + a for a in v.aliases)})" if v.aliases else "")
            for v in others
        ),
    )
    out.print(table)


@models_app.command("curves")
def models_curves(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    family: Annotated[
        str | None, typer.Option(help="A candidate other than the chosen one (auto runs).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-epoch loss and validation-metric curves of a version's training run."""
    with Registry() as reg:
        version = reg.get(ref)
        runs = reg.runs(version.name, version.version, phase="train")
    chosen = family or version.family
    fits = [
        f for run in runs for f in run.details.get("epochs", [])
        if f.get("family") == chosen and f.get("stage") == "fit"
    ]  # fmt: skip
    if not fits:
        raise UsageError(
            f"{version.ref} has no per-epoch record of a '{chosen}' fit; "
            f"its family is {version.family}"
        )
    fit = fits[-1]
    series = [k for k in fit if k not in ("family", "stage")]
    if as_json:
        _print_json({"model": version.ref, "family": chosen, **{k: fit[k] for k in series}})
        return
    table = Table(title=f"{version.ref}: {chosen}, {len(fit['epoch'])} epochs")
    for key in series:
        table.add_column(key, justify="right", min_width=max(9, len(key)))
    for i in range(len(fit["epoch"])):
        table.add_row(*(_cell(fit[k][i]) if i < len(fit[k]) else "-" for k in series))
    print_whole(table)


def print_whole(table: Table) -> None:
    """Print ``table`` at its natural width: a narrow terminal (or a pipe's 80 columns)
    wraps its lines rather than squeeze, cut or hide figures."""
    natural = out.measure(table, options=out.options.update(max_width=10_000)).maximum
    width = out.width
    out.width = max(width, natural)  # print(width=) cannot go past the console's own width
    try:
        out.print(table, crop=False)
    finally:
        out.width = width


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _name_version(ref: str) -> tuple[str, int]:
    parsed = parse_ref(ref)
    if parsed.version is None:
        raise UsageError(f"'{ref}' names no version: write NAME:VERSION, e.g. {parsed.name}:1")
    return parsed.name, parsed.version


@models_app.command("delete")
def models_delete(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to delete.")],
    force: Annotated[
        bool, typer.Option(help="Delete even if an alias points at it (the alias goes too).")
    ] = False,
) -> None:
    """Delete one version and its Bundle."""
    name, version = _name_version(ref)
    with Registry() as reg:
        reg.delete_version(name, version, force=force)
    out.print(f"deleted {name}:{version}")


@app.command()
def promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to set or move.")] = "champion",
    reason: Annotated[
        str, typer.Option(help="Why, kept with the decision (e.g. 'rollback: v4 mislabels').")
    ] = "",
) -> None:
    """Point NAME@ALIAS at a version (set it, or move it: a promotion or a rollback)."""
    name, version = _name_version(ref)
    with Registry() as reg:
        decision = reg.decide(
            name, kind="manual", alias=alias, challenger=version, promoted=True,
            reason=reason or "promoted by hand (tandem promote)",
        )  # fmt: skip
    was = decision.champion_version
    out.print(f"{name}@{alias} → {name}:{version}" + (f" (was {name}:{was})" if was else ""))


@app.command()
def predict(
    ref: Annotated[
        str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a Bundle directory.")
    ],
    input: Annotated[Path, typer.Option("--input", help="CSV, Parquet or JSONL rows to score.")],
    output: Annotated[
        Path | None, typer.Option(help="Write predictions here (.csv, .parquet or .jsonl).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict INPUT's rows with a registered model."""
    from tandem.data.readers import detect_format, read_table
    from tandem.data.writers import write_table
    from tandem.inference import load

    if output is not None:
        detect_format(output)  # an unknown suffix is refused before any work
        if output.exists():
            raise UsageError(
                f"'{output}' already exists: choose a new --output path or remove the file"
            )
        if not output.parent.is_dir():
            raise UsageError(f"the folder of --output '{output}' does not exist: create it first")
    predictor = load(ref)
    predictions = predictor.predict(read_table(input))
    if output is not None:
        write_table(predictions, output)
        if not as_json:
            out.print(f"wrote {predictions.num_rows:,} predictions to {output}")
    if as_json:
        _print_json(
            predictions.to_pylist()
            if output is None
            else {"rows": predictions.num_rows, "output": str(output)}
        )
        return
    if output is None:
        shown = min(predictions.num_rows, 20)
        table = Table(
            title=f"{predictor.manifest.name}:{predictor.manifest.version} — first {shown} of {predictions.num_rows:,} rows (use --output for all)"
        )
        for col in predictions.column_names:
            table.add_column(col)
        for row in predictions.slice(0, shown).to_pylist():
            table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
        out.print(table)


@app.command()
def batch(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    input: Annotated[
        list[Path],
        typer.Option("--input", help="CSV, Parquet or JSONL file or folder (repeat for more)."),
    ],
    output: Annotated[Path, typer.Option(help="The file to write the predictions to.")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="parquet, csv or jsonl (default: the output's suffix, else parquet)."
        ),
    ] = None,
    keep: Annotated[
        list[str] | None,
        typer.Option(help="Input column to copy beside the predictions, e.g. an id (repeatable)."),
    ] = None,
    engine: Annotated[str, typer.Option(help="local, or ray (Ray Data).")] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to run on (default: a local Ray instance).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Finish the unfinished job for this output.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    on_error: Annotated[
        str,
        typer.Option(
            help="A row that cannot be scored: fail (stop), skip (leave out) or null "
            "(empty predictions); skip and null list such rows in a rejects file."
        ),
    ] = "fail",
    chunk_rows: Annotated[int, typer.Option(help="Rows per chunk.")] = 65_536,
    threads: Annotated[
        int | None,
        typer.Option(
            help="One ONNX Runtime session with this many threads (default: a "
            "single-threaded session per core, measured faster)."
        ),
    ] = None,
    log_sample: Annotated[
        float,
        typer.Option(help="Share of rows kept in the prediction log for monitoring (0: none)."),
    ] = 0.1,
    as_json: JsonOpt = False,
) -> None:
    """Score files of rows with a registered model: streamed, resumable, any size."""
    from tandem.batch import BatchOptions, run_batch

    options = BatchOptions(
        inputs=input, output=output, format=format, keep=keep or [], on_error=on_error,
        resume=resume, overwrite=overwrite, chunk_rows=chunk_rows, threads=threads,
        engine=engine, ray_address=ray_address, log_sample=log_sample,
    )  # fmt: skip
    with _batch_progress(not as_json) as update:
        result = run_batch(ref, options, on_progress=update)
    if as_json:
        _print_json(result.to_json())
        return
    if result.complete_before:
        out.print(f"'{result.output}' is complete: nothing to resume", highlight=False)
        return
    table = Table(title=f"{result.model} → {result.output}")
    for col in ("rows", "seconds", "rows/s", "CPU seconds", "peak memory", "rejected"):
        table.add_column(col, justify="right")
    p = result.profile
    table.add_row(
        f"{result.rows_in:,}", f"{p.wall_seconds:.2f}", f"{result.rows_per_second:,.0f}",
        f"{p.cpu_seconds:.2f}", f"{p.peak_rss_mb:,.0f} MB", f"{result.rejected:,}",
    )  # fmt: skip
    out.print(table)
    notes = [f"wrote {result.rows_out:,} rows to {result.output}"]
    if result.resumed_chunks:
        notes.append(f"resumed after {result.resumed_chunks} finished chunk(s)")
    if result.rejects is not None:
        notes.append(f"{result.rejected:,} rejected row(s) listed in {result.rejects}")
    out.print("; ".join(notes), highlight=False)


def _batch_progress(enabled: bool) -> AbstractContextManager[Any]:
    """A bar over the input read, with rows, rows/s and the time left."""

    def start(bar: Progress) -> Callable[[Any], None]:
        task = bar.add_task("scoring", total=1.0, rows=0, rate=0.0)
        started = time.perf_counter()

        def update(event: Any) -> None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=event.done, rows=event.rows, rate=event.new / elapsed)

        return update

    columns = [
        TextColumn("scoring"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[rows]:,} rows"), TextColumn("{task.fields[rate]:,.0f} rows/s"),
        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
    ]  # fmt: skip
    return _bar(enabled, columns, start)


@app.command()
def serve(
    refs: Annotated[
        list[str], typer.Argument(help="Models to serve: NAME, NAME:VERSION or NAME@ALIAS.")
    ],
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 exposes it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one).")] = 8000,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Name of an environment variable holding the API key to require."),
    ] = None,
    timeout_ms: Annotated[
        float, typer.Option(help="Default deadline of a request; clients may set their own.")
    ] = 1000.0,
    max_batch: Annotated[
        int | None, typer.Option(help="Rows per batch (default: learnt from measured batches).")
    ] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads per model.")] = 1,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, in MiB.")] = 16.0,
    poll_s: Annotated[
        float, typer.Option(help="Seconds between re-reading followed aliases (0: never).")
    ] = 1.0,
    ledger_interval: Annotated[
        float,
        typer.Option(help="Seconds between usage records for `tandem report` (0: none)."),
    ] = 60.0,
    processes: Annotated[
        int, typer.Option(help="Server processes sharing the port (more cores, more throughput).")
    ] = 1,
    log_sample: Annotated[
        float,
        typer.Option(help="Share of requests kept in the prediction log for monitoring (0: off)."),
    ] = 1.0,
    log_flush_s: Annotated[
        float,
        typer.Option(help="Seconds a logged row waits in memory at most before it is written."),
    ] = 10.0,
    log_flush_rows: Annotated[
        int,
        typer.Option(
            help="Write the log sooner once this many rows wait (the log's memory: about "
            "twice this many rows)."
        ),
    ] = 100_000,
) -> None:
    """Serve models over HTTP: Open Inference Protocol v2 and MLflow /invocations."""
    import logging

    from tandem.monitoring.predictions import LogOptions
    from tandem.serving import BatcherConfig, ServeOptions
    from tandem.serving import serve as run_serve

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise UsageError(
                f"--api-key-env names {api_key_env}, which is not set or empty: export the key in it"
            )
    options = ServeOptions(
        host=host, port=port, api_key=api_key, threads=threads, poll_s=poll_s,
        max_body=int(max_body_mb * 2**20), ledger_interval_s=ledger_interval,
        batching=BatcherConfig(timeout_s=timeout_ms / 1e3, max_batch=max_batch),
        log=LogOptions(sample=log_sample, flush_s=log_flush_s, flush_rows=log_flush_rows),
    )  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def announce(served: Sequence[str], port: int, seconds: float | None, more: str = "") -> None:
        err.print(
            f"serving {', '.join(served)} on http://{host}:{port} (ready in {seconds or 0:.2f} s"
            f"{more}); Ctrl-C stops",
            highlight=False,
        )

    if processes != 1:
        from tandem.serving.workers import serve_processes

        status = serve_processes(
            refs, options, processes,
            on_ready=lambda port, s: announce(refs, port, s, f", {processes} processes"),
        )  # fmt: skip
        if status:
            raise typer.Exit(status)
        return

    def ready(server: Any) -> None:
        served = [m.runner.ref for m in server.models if m.runner is not None]
        announce(served, server.port, server.ready_after_s)

    run_serve(refs, options, on_ready=ready)


@app.command()
def report(
    ref: Annotated[
        str,
        typer.Argument(help="The model: NAME (its newest version), NAME:VERSION or NAME@ALIAS."),
    ],
    requests_per_day: Annotated[
        float | None,
        typer.Option(help="Requests a day to project (default: the rate observed while served)."),
    ] = None,
    months: Annotated[float, typer.Option(help="Months to project over.")] = 12.0,
    retrain_every: Annotated[
        float | None, typer.Option(help="Days between retrains (default 30; 0: never).")
    ] = 30.0,
    html: Annotated[
        Path | None, typer.Option(help="Also write the report, with its charts, to this HTML file.")
    ] = None,
    prices: Annotated[
        Path | None,
        typer.Option(
            help="Price table (TOML) over the defaults (else TANDEM_PRICES, else $TANDEM_HOME/prices.toml)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """What this model's training and inference cost, measured, and over its lifetime."""
    from tandem.ledger.cost import PriceTable
    from tandem.ledger.report import build_report

    table = PriceTable.load(prices)
    with Registry() as reg:
        result = build_report(
            reg, ref, table, requests_per_day=requests_per_day, months=months,
            retrain_every=retrain_every or None,
        )  # fmt: skip
    _render_report(result, as_json=as_json, html=html)


@app.command()
def advise(
    ref: Annotated[
        str,
        typer.Argument(help="The model: NAME (its newest version), NAME:VERSION or NAME@ALIAS."),
    ],
    p99_ms: Annotated[
        float, typer.Option("--p99-ms", help="The objective: p99 latency in ms at --rps.")
    ],
    rps: Annotated[float, typer.Option("--rps", help="The objective: requests per second.")],
    threads: Annotated[
        str | None,
        typer.Option(
            help="ONNX Runtime threads to try, e.g. 1,2 (default: 1, 2, 4… up to the cores)."
        ),
    ] = None,
    max_batch: Annotated[
        str | None, typer.Option(help="Largest batches to try; 0: learnt (default 0,8,32,128).")
    ] = None,
    processes: Annotated[
        str | None,
        typer.Option(help="Server processes to try (default: 1, 2, 4… up to the cores)."),
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="A variant to try (repeatable): fp32, or the technique of a version tandem "
            "optimize registered from this one (default: every one there is)."
        ),
    ] = None,
    rows_per_request: Annotated[int, typer.Option(help="Rows in each request.")] = 1,
    window_s: Annotated[
        float, typer.Option(help="Seconds per measuring window (3 must agree within 10%).")
    ] = 1.0,
    max_windows: Annotated[
        int, typer.Option(help="Windows before a phase gives up settling.")
    ] = 10,
    confirm_rounds: Annotated[
        int, typer.Option(help="Times the finalists (and the defaults) are measured again.")
    ] = 2,
    prices: Annotated[
        Path | None, typer.Option(help="Price table (TOML) over the defaults, as for report.")
    ] = None,
    devices: Annotated[
        Path | None,
        typer.Option(
            help="Device specs (TOML) over the defaults (else TANDEM_DEVICES, else $TANDEM_HOME/devices.toml)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure ways to serve a model here; the cheapest that meets the objective, and the hardware to train and serve on."""
    from tandem.ledger.advise import advise as run_advise
    from tandem.ledger.advise import default_grid, parse_list
    from tandem.ledger.cost import PriceTable
    from tandem.ledger.devices import DeviceTable
    from tandem.ledger.hardware import usable_cores

    table, specs = PriceTable.load(prices), DeviceTable.load(devices)
    grid = default_grid(usable_cores())
    grid["threads"] = parse_list("--threads", threads, grid["threads"])
    grid["max_batch"] = parse_list("--max-batch", max_batch, grid["max_batch"])
    grid["processes"] = parse_list("--processes", processes, grid["processes"])
    if variant:
        grid["variant"] = list(variant)
    seen = 0

    def progress(point: Any) -> None:
        nonlocal seen
        seen += 1
        t = point.target
        at = (
            f"at {rps:,.0f}/s p99 {t.p99_ms:.1f} ms on {t.cores:.2f} cores"
            if t is not None and t.p99_ms is not None
            else "target rate not tried"
        )
        err.print(
            f"[{seen}] {point.config.label}: {point.capacity.goodput:,.0f}/s at most; {at}"
            f"{'' if point.meets else ' — misses: ' + point.why_not}",
            highlight=False,
        )

    # SIGTERM (a killed terminal, a job scheduler) unwinds like Ctrl-C, so the servers and load
    # generators the sweep started are stopped and its temporary files removed
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Registry() as reg:
        result = run_advise(
            reg, ref, rps=rps, slo_p99_ms=p99_ms, grid=grid, rows_per_request=rows_per_request,
            window_s=window_s, max_windows=max_windows, confirm_rounds=confirm_rounds,
            prices=table, devices=specs,
            on_point=None if as_json else progress,
        )  # fmt: skip
    if as_json:
        _print_json(result.to_json())
        return
    _render_advice(result)


def _render_advice(result: Any) -> None:
    cur = result.currency
    shown = Table(
        title=f"{result.name}:{result.version} — p99 ≤ {result.slo_p99_ms:g} ms at "
        f"{result.rps:,.0f} requests/s; * Pareto front",
        show_lines=False,
    )
    for col in ("", "configuration", "max /s", f"p99 ms at {result.rps:,.0f}/s",
                "CPU cores", f"{cur}/1M predictions", "J/prediction", "objective"):  # fmt: skip
        shown.add_column(col)
    for i, p in enumerate(result.points):
        t = p.target
        shown.add_row(
            ("*" if i in result.front else "") + ("→" if p is result.best else ""),
            p.config.label,
            f"{p.capacity.goodput:,.0f}" + ("" if p.capacity.stable else " (unstable)"),
            "—" if t is None or t.p99_ms is None else f"{t.p99_ms:.2f}",
            "—" if t is None else f"{t.cores:.2f}" + ("" if t.stable else " (unstable)"),
            "—" if p.cost_per_million is None else f"{p.cost_per_million:.4g}",
            "—" if p.joules_per_prediction is None else f"{p.joules_per_prediction:.3g}",
            ("met" if p.meets else p.why_not)
            + (f" ({p.met_rounds} of {p.rounds} rounds)" if p.meets and p.rounds > 1 else ""),
        )
    out.print(shown)
    if result.best is None:
        out.print("no configuration measured here meets the objective", highlight=False)
    else:
        b = result.best
        out.print(
            f"cheapest that meets it: {b.config.label} — {b.cost_per_million:.4g} {cur} per 1M "
            f"predictions, p99 {b.target.p99_ms:.2f} ms, {b.target.cores:.2f} cores busy",
            highlight=False,
        )
    for phase in ("training", "inference"):
        part = result.hardware[phase]
        rec = part["recommended"]
        price = "money" if phase == "training" else "per_million"
        unit = cur if phase == "training" else f"{cur}/1M"
        hw = Table(title=f"hardware for {phase} (→ recommended)")
        for col in ("device", unit, "", "figures"):
            hw.add_column(col)
        for o in part["options"]:
            hw.add_row(
                ("→ " if o is rec else "") + o["device"],
                "—" if o[price] is None else f"{o[price]:.4g}",
                "estimate" if o["estimated"] else "measured",
                o["figures"],
            )
        out.print(hw)
        whole = part.get("whole_run")
        if whole:
            out.print(
                f"the whole training run here (search included): {whole['seconds']:.3g} s, "
                f"{whole['money']:.3g} {cur}",
                highlight=False,
            )
    err.print(
        f"note: GPU figures are estimates from the graph's FLOPs "
        f"({result.hardware['flops_per_row']:,.0f} per row) and declared device specs, not "
        "measurements; --json gives each formula with its numbers",
        highlight=False,
    )
    for note in result.notes:
        err.print(f"note: {note}", highlight=False)


def _write_report_html(result: Any, html: Path) -> None:
    from tandem.ledger.html import render_html, write_html
    from tandem.ledger.report import projection_rows, table_rows

    write_html(html, render_html(result, table_rows(result), projection_rows(result)))


def _render_report(result: Any, *, as_json: bool, html: Path | None) -> None:
    from tandem.ledger.report import projection_rows, table_rows

    rows, projected = table_rows(result), projection_rows(result)
    if html is not None:
        _write_report_html(result, html)
    if as_json:
        _print_json(result.to_json() | ({"html": str(html)} if html else {}))
        return
    for title, content in (
        (f"training vs inference, measured — {result.name}:{result.version}", rows),
        ("lifetime projection", projected),
    ):
        if len(content) < 2:
            continue
        shown = Table(title=title, show_lines=True)
        for col in content[0]:
            shown.add_column(col)
        for row in content[1:]:
            shown.add_row(*row)
        out.print(shown)
    for note in result.notes:
        err.print(f"note: {note}", highlight=False)
    if html is not None:
        err.print(f"wrote {html}", highlight=False)


@app.command()
def demo(
    time_budget: Annotated[
        float, typer.Option(help="Seconds of fitting for the auto search.")
    ] = 30.0,
    html: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the HTML report (default: $TANDEM_HOME/reports/rain.html)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train on old weather, predict new weather, and report what each phase costs."""
    from tandem.config import Settings
    from tandem.demo import run_demo

    if html is None:
        html = Settings.from_env().home / "reports" / "rain.html"
        html.parent.mkdir(parents=True, exist_ok=True)
    with _progress(not as_json) as update:
        result = run_demo(time_budget=time_budget, on_progress=update)
    if as_json:
        _write_report_html(result.report, html)
        _print_json(result.to_json() | {"html": str(html)})
        return
    out.print(_leaderboard(result.training))
    table = Table(title=f"the demo's stages — {result.training.version.ref}")
    for col in ("", "training", "inference"):
        table.add_column(col)
    for row in result.table():
        table.add_row(*row)
    out.print(table)
    _render_loop(result.loop)
    _render_report(result.report, as_json=False, html=html)


def _render_loop(loop: Any) -> None:
    """The demo's monitoring stage: drift, decay, and the retraining decision."""
    from tandem.cli_monitoring import _render_monitor, _render_retrain

    out.print(
        f"\n[bold]monitor and retrain[/]: the {loop.labelled:,} later days served over HTTP were "
        "logged, and their truth fed back",
        highlight=False,
    )
    _render_monitor(loop.monitor)
    _render_retrain(loop.retrain)


# the monitoring loop's and optimize's commands live in their own modules; importing them
# registers them
from tandem import cli_monitoring, cli_optimize  # noqa: E402, F401


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tandem`` script."""
    try:
        # standalone mode: Typer reports usage errors itself (exit code 2) and exits
        app(args=argv, prog_name="tandem")
    except TandemError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("TANDEM_DEBUG"):
            raise
        err.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {exc} (set TANDEM_DEBUG=1 for the traceback)",
            highlight=False,
        )
        sys.exit(1)
