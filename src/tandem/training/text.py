"""Training on text by transfer learning: a column of texts and a label → encoder + head.

read → find the text column → split, stratified → tokenize with the encoder's own tokenizer
(the one the Bundle keeps) → embed with the pretrained all-MiniLM-L6-v2 and train a head on
the embeddings (optionally fine-tuning the encoder's top layers) → export encoder and head as
one graph over token ids, checked against the in-memory model on the test texts → register
with the tokenizer in the Bundle. Serving tokenizes with ``tokenizers`` and imports no torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.compute as pc

from tandem.bundle.graph import GraphBuilder
from tandem.bundle.outputs import Outputs
from tandem.data.profile import output_profile, profile_columns
from tandem.data.schema import ColumnSpec
from tandem.data.split import split_indices
from tandem.errors import ConfigError, DataError, TandemError, TrainingError
from tandem.features.text import TEXT_FEED, TextTokens
from tandem.inference.runtime import make_session
from tandem.ledger.meter import Meter
from tandem.ledger.records import EpochLog
from tandem.models.auto import Candidate
from tandem.models.base import configured
from tandem.models.text import TextClassifier, encoder_folder
from tandem.monitoring.predictions import output_columns
from tandem.training.metrics import score

if TYPE_CHECKING:
    from tandem.training.train import Run, TrainResult

__all__ = ["TOKENIZER", "looks_like_text", "text_column", "train_text"]

#: the Bundle file that holds the tokenizer
TOKENIZER = "tokenizer.json"
#: a string column is free text when its typical value is at least this long and has at
#: least this many words (a category such as "north" or "premium plan" is not)
TEXT_MIN_CHARS = 20
TEXT_MIN_WORDS = 4


def looks_like_text(column: pa.ChunkedArray) -> bool:
    """Whether a column holds free text rather than categories: strings whose median length
    and word count reach :data:`TEXT_MIN_CHARS` and :data:`TEXT_MIN_WORDS`."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return False
    values = column.drop_null()
    if len(values) == 0:
        return False
    sample = values.slice(0, 2000)
    chars = pc.utf8_length(sample).to_numpy(zero_copy_only=False)
    words = pc.list_value_length(pc.utf8_split_whitespace(sample)).to_numpy(zero_copy_only=False)
    return bool(np.median(chars) >= TEXT_MIN_CHARS and np.median(words) >= TEXT_MIN_WORDS)


def text_column(table: pa.Table, target: str, ignore: Sequence[str]) -> str:
    """The one text column a text model reads; every other column must be the target or
    ignored.

    Raises:
        DataError: no text column, several, or other feature columns beside it.
    """
    features = [c for c in table.column_names if c != target and c not in ignore]
    texts = [c for c in features if looks_like_text(table.column(c))]
    if not texts:
        strings = [
            c for c in features if pa.types.is_string(table.column(c).type)
            or pa.types.is_large_string(table.column(c).type)
        ]  # fmt: skip
        if len(strings) != 1:
            raise DataError(
                f"no column of free text to train a text model on (columns: {features}); "
                "a text model reads one column of texts"
            )
        texts = strings  # --kind text names it so, whatever its typical length
    if len(texts) > 1:
        raise DataError(
            f"columns {texts} all hold text: a text model reads one; leave the others out "
            "with --ignore"
        )
    others = [c for c in features if c not in texts]
    if others:
        raise DataError(
            f"a text model reads the text column '{texts[0]}' alone; leave out {others} with "
            "--ignore (or train a table model on them)"
        )
    return str(texts[0])


def train_text(
    data: Any, run: Run, *, target: str, model: str, task: str, seed: int,
    ignore: Sequence[str], params: Mapping[str, Any] | None, time_budget: float | None,
) -> TrainResult:  # fmt: skip
    """Fit, freeze and register a text classifier (the work of ``tandem.train`` for a table
    whose feature is one column of texts)."""
    from tandem.training import train as supervised

    if model not in ("auto", TextClassifier.name):
        raise ConfigError(
            f"texts are classified by the {TextClassifier.name} model; got --model {model}"
        )
    if task not in ("auto", "classification"):
        raise ConfigError(f"text models classify; --task {task} is not available for them yet")
    classifier = configured(TextClassifier, TextClassifier.name, params)
    total = 4
    with Meter() as meter:
        epochs = EpochLog(meter)
        run.notify(0, total, "reading data")
        table, source = supervised._as_table(data)
        column = text_column(table, target, ignore)
        table, _, classes, y = supervised.prepare_target(table, target, "classification")
        texts = _texts(table.column(column), column)
        split = split_indices(len(y), labels=y, seed=seed)
        rows_of = {"train": split.train, "validation": split.validation, "test": split.test}
        tokens = TextTokens(
            (encoder_folder() / TOKENIZER).read_text(), classifier.max_tokens, classifier.chunks
        )
        by_split = {k: [texts[i] for i in idx] for k, idx in rows_of.items()}
        feeds = {k: tokens.feed(v, column) for k, v in by_split.items()}
        ys = {k: y[idx] for k, idx in rows_of.items()}
        run.notify(1, total, "training encoder + head")
        started = time.monotonic()
        deadline = math.inf if time_budget is None else started + time_budget
        try:
            classifier.fit(
                {k: feeds[k] for k in ("train", "validation")}, ys, len(classes), seed=seed,
                deadline=deadline, on_epoch=epochs.fit(TextClassifier.name, "fit"),
            )  # fmt: skip
        except TandemError:
            raise
        except Exception as exc:
            raise TrainingError(
                f"training the text model failed: {exc}; nothing was registered"
            ) from exc
        predicted = {
            "validation": classifier.validation_proba_,
            "test": classifier.predict(feeds["test"]),
        }
        best = Candidate(
            TextClassifier.name,
            score("classification", ys["validation"], predicted["validation"]),
            score("classification", ys["test"], predicted["test"]),
            time.monotonic() - started,
            chosen=True,
        )
        run.notify(2, total, "freezing and verifying")
        outputs = Outputs("classification", tuple(classes))
        g = GraphBuilder("tandem")
        inputs = {n: g.input(n, "int64", [None, None, None]) for n in TEXT_FEED}
        (out,) = g.embed(onnx.load_from_string(classifier.export()), inputs, "text")
        g.output(out, outputs.graph_output, "double", [None, None])
        graph = g.build().SerializeToString()
        frozen_out = make_session(graph).run(None, feeds["test"])[0]
        parity = supervised.check_parity(
            frozen_out, predicted["test"], supervised.PARITY_TOLERANCE, "text model"
        )
        stats = tokens.statistics(by_split["train"], column)
        frozen = supervised.Frozen(
            outputs=outputs, target=target, inputs=(ColumnSpec(name=column, kind="text"),),
            leaderboard=[best], best=best, graph=graph, parity=parity,
            fingerprint=supervised.fingerprint(table), source=source,
            rows={k: len(v) for k, v in rows_of.items()}, ignored=list(ignore),
            reference=profile_columns([ColumnSpec(name=n, kind="numeric") for n in stats], stats),
            reference_outputs=output_profile(output_columns(outputs, predicted["validation"])),
            sample=None, preprocessing=tokens.state(), model=classifier.describe(),
            recipe={
                "target": target, "task": "classification", "model": TextClassifier.name,
                "time_budget": time_budget, "seed": seed, "ignore": list(ignore),
                "params": dict(params or {}), "kind": "text",
            },
            files={TOKENIZER: tokens.tokenizer_json.encode()},
            sections={"text": {"tokenizer": TOKENIZER, **tokens.state()}},
        )  # fmt: skip
    pipeline = supervised.Pipeline(_Features(tokens, column), classifier)
    return supervised.finish(
        frozen, meter, epochs, run, pipeline=pipeline, split=split, total=total
    )  # fmt: skip


class _Features:
    """The in-memory counterpart of the graph's input side, for ``TrainResult.pipeline``."""

    def __init__(self, tokens: TextTokens, column: str) -> None:
        self.tokens, self.column = tokens, column

    def features(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.tokens.feed(columns[self.column], self.column)


def _texts(values: pa.ChunkedArray, column: str) -> list[str]:
    texts = values.to_pylist()
    missing = [i for i, t in enumerate(texts) if t is None]
    empty = [i for i, t in enumerate(texts) if isinstance(t, str) and not t.strip()]
    for what, rows in (("missing", missing), ("empty", empty)):
        if rows:
            raise DataError(
                f"{len(rows)} text(s) in column '{column}' are {what} (rows {rows[:5]}"
                f"{' ...' if len(rows) > 5 else ''}): a text model learns nothing from them; "
                "drop those rows or fill them"
            )
    return [str(t) for t in texts]
