"""Training on images: an image folder (or a table with a column of image bytes) → a CNN.

read (one sub-folder per class → ``image``, ``label``, ``path``) → split, stratified →
decode with Pillow → choose the input size and fit the per-channel normalisation on the
train split → make the network's tensors with the Bundle's own preprocessing graph → fit the
CNN (early stopping on validation) → one graph of preprocessing and network, checked against
the in-memory network on the test images → register. The Bundle's input is the image column
(encoded bytes); the Predictor decodes, the graph resizes and normalises.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from tandem.bundle.outputs import Outputs
from tandem.data.images import (
    CLASS,
    decode_images,
    image_channels,
    image_feed,
    image_statistics,
    is_image_folder,
    read_image_folder,
)
from tandem.data.profile import output_profile, profile_columns
from tandem.data.schema import ColumnSpec
from tandem.data.split import split_indices
from tandem.errors import ConfigError, DataError, SchemaError, TandemError, TrainingError
from tandem.features.images import IMAGE_INPUT, IMAGE_SIZE_INPUT, ImagePreprocessor
from tandem.inference.runtime import make_session
from tandem.ledger.meter import Meter
from tandem.ledger.records import EpochLog
from tandem.models.auto import Candidate
from tandem.models.base import FitContext, configured
from tandem.models.cnn import CNN
from tandem.monitoring.predictions import output_columns
from tandem.training.loop import TorchOptions
from tandem.training.metrics import score

if TYPE_CHECKING:
    from tandem.training.train import Run, TrainResult

__all__ = ["CLASS", "image_column", "train_images"]


def image_column(table: pa.Table, target: str | None) -> str | None:
    """The one column of image bytes (binary type) besides the target; None when there is none.

    Raises:
        DataError: more than one such column.
    """
    found = [
        f.name
        for f in table.schema
        if f.name != target and (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type))
    ]
    if len(found) > 1:
        raise DataError(
            f"columns {found} all hold bytes: an image model takes one image column; leave the "
            "others out of the file"
        )
    return found[0] if found else None


def train_images(
    data: Any, run: Run, *, target: str | None, model: str, seed: int,
    params: Mapping[str, Any] | None, torch: TorchOptions | None, time_budget: float | None,
) -> TrainResult:  # fmt: skip
    """Fit, freeze and register a CNN on images (the work of ``tandem.train`` for an image
    folder or a table with an image column)."""
    from tandem.training import train as supervised

    if model not in ("auto", "cnn"):
        raise ConfigError(f"images are classified by the cnn model; got --model {model}")
    settings = dict(params or {})
    side = settings.pop("image_size", None)
    if side is not None and not (isinstance(side, int) and 4 <= side <= 512):
        raise ConfigError(f"image_size is the side in pixels, 4 to 512; got {side!r}")
    family = configured(CNN, "cnn", settings, also=["image_size"])
    total = 4
    with Meter() as meter:
        epochs = EpochLog(meter)
        run.notify(0, total, "reading images")
        if isinstance(data, str | Path) and is_image_folder(data):
            table, source = read_image_folder(data), str(data)
            if CLASS not in table.column_names:
                raise DataError(
                    f"the images in '{data}' are not sorted into classes: put each class's "
                    "images in a sub-folder named after the class"
                )
            target = target or CLASS
        else:
            table, source = supervised._as_table(data)
        if target is None:
            raise ConfigError("name the column of class labels with --target")
        column = image_column(table, target)
        if column is None:
            raise DataError(f"{source} has no column of image bytes to train on")
        table, task, classes, y = supervised.prepare_target(table, target, "classification")
        split = split_indices(len(y), labels=y, seed=seed)
        rows_of = {"train": split.train, "validation": split.validation, "test": split.test}
        images = _decode(table, column)
        by_split = {k: [images[i] for i in idx] for k, idx in rows_of.items()}
        pre = ImagePreprocessor.choose(by_split["train"], side, column).fit(by_split["train"])
        X = {k: pre.transform(v) for k, v in by_split.items()}
        ys = {k: y[idx] for k, idx in rows_of.items()}
        run.notify(1, total, "training cnn")
        started = time.monotonic()
        ctx = FitContext(
            task="classification", n_classes=len(classes), seed=seed, torch=torch,
            deadline=math.inf if time_budget is None else started + time_budget,
            on_epoch=epochs.fit("cnn", "fit"),
        )  # fmt: skip
        try:
            family.fit(X["train"], ys["train"], X["validation"], ys["validation"], ctx)
        except TandemError:
            raise
        except Exception as exc:
            raise TrainingError(f"training cnn failed: {exc}; nothing was registered") from exc
        predicted = {k: family.predict(X[k]) for k in ("validation", "test")}
        best = Candidate(
            "cnn",
            score("classification", ys["validation"], predicted["validation"]),
            score("classification", ys["test"], predicted["test"]),
            time.monotonic() - started,
            chosen=True,
        )
        run.notify(2, total, "freezing and verifying")
        outputs = Outputs("classification", tuple(classes))
        graph = supervised.build_graph(pre, family, outputs)
        pixels, sizes = image_feed(by_split["test"])
        frozen_out = make_session(graph).run(None, {IMAGE_INPUT: pixels, IMAGE_SIZE_INPUT: sizes})
        parity = supervised.check_parity(
            frozen_out[0], predicted["test"], supervised.PARITY_TOLERANCE, "image model"
        )
        stats = image_statistics(by_split["train"], column)
        frozen = supervised.Frozen(
            outputs=outputs, target=target, inputs=(ColumnSpec(name=column, kind="image"),),
            leaderboard=[best], best=best, graph=graph, parity=parity,
            fingerprint=supervised.fingerprint(table), source=source,
            rows={k: len(v) for k, v in rows_of.items()}, ignored=[],
            reference=profile_columns([ColumnSpec(name=n, kind="numeric") for n in stats], stats),
            reference_outputs=output_profile(output_columns(outputs, predicted["validation"])),
            sample=None, preprocessing=pre.state(), model=family.describe(),
            recipe={
                "target": target, "task": task, "model": "cnn", "time_budget": time_budget,
                "seed": seed, "ignore": [], "params": dict(params or {}), "kind": "image",
            },
            sections={"image": pre.state()},
        )  # fmt: skip
    pipeline = supervised.Pipeline(pre, family)
    return supervised.finish(
        frozen, meter, epochs, run, pipeline=pipeline, split=split, total=total
    )  # fmt: skip


def _decode(table: pa.Table, column: str) -> list[np.ndarray]:
    values = table.column(column)
    # an image folder's files are named by their path
    names = table.column("path").to_pylist() if "path" in table.column_names else None
    try:
        return decode_images(values, image_channels(values, column), column, names=names)
    except SchemaError as exc:
        raise DataError(f"{exc}; remove or replace it") from None
