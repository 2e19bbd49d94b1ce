"""Text into token ids, the same way in training and in the Predictor.

A text model's Bundle keeps the encoder's ``tokenizer.json``; this module loads it with the
``tokenizers`` library (no torch, no transformers) and turns texts into the graph's two
inputs, ``input_ids`` and ``attention_mask``, int64 of shape (tokens, chunks, n): rows on the
last axis like every graph input, so the server's batcher joins requests by padding the other
axes with zeros, which the mask marks as nothing.

A text longer than ``max_tokens`` is cut into up to ``chunks`` consecutive pieces, each
encoded with its own [CLS] … [SEP]; the graph embeds every piece and averages the pieces of a
text, so a news article is read whole rather than by its first paragraph. What comes after
``chunks`` pieces is dropped.

Monitoring compares two numbers per text taken from the same tokens (so the server's log,
a file and the training data agree): ``<column>.tokens``, how many it has (up to the
``max_tokens × chunks`` read), and ``<column>.unknown_share``, the share the vocabulary does
not know (a new language or alphabet raises it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.errors import SchemaError

__all__ = ["TEXT_FEED", "TEXT_STATISTICS", "TextTokens", "feed_statistics", "text_problem"]

#: the graph inputs of a text model
TEXT_FEED = ("input_ids", "attention_mask")
TEXT_STATISTICS = ("tokens", "unknown_share")


@dataclass
class TextTokens:
    """Tokenizes texts for a text model; see the module docstring."""

    tokenizer_json: str
    max_tokens: int
    chunks: int
    _tokenizer: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise SchemaError(
                "text models tokenize with the tokenizers package: pip install 'tandem-ml[text]'"
            ) from None
        tok = Tokenizer.from_str(self.tokenizer_json)
        tok.no_padding()
        tok.enable_truncation(self.max_tokens)
        self._tokenizer = tok
        self.unknown_id = tok.token_to_id("[UNK]")

    def feed(self, texts: Any, column: str = "text") -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask``, (tokens, chunks, n) int64, of ``texts``.

        Raises:
            SchemaError: a value is not text (None, a number, a list), naming the row.
        """
        encoded = self._tokenizer.encode_batch(_texts(texts, column))
        pieces = [[e, *e.overflowing][: self.chunks] for e in encoded]
        n = len(pieces)
        k = max((len(p) for p in pieces), default=1)
        t = max((len(e.ids) for p in pieces for e in p), default=1)
        ids = np.zeros((t, k, n), dtype=np.int64)
        mask = np.zeros((t, k, n), dtype=np.int64)
        for i, parts in enumerate(pieces):
            for j, e in enumerate(parts):
                ids[: len(e.ids), j, i] = e.ids
                mask[: len(e.ids), j, i] = e.attention_mask
        return dict(zip(TEXT_FEED, (ids, mask), strict=True))

    def statistics(self, texts: Any, column: str = "text") -> dict[str, np.ndarray]:
        """The monitored numbers of ``texts`` (see the module docstring)."""
        f = self.feed(texts, column)
        ids, mask = (f[k] for k in TEXT_FEED)
        return statistics_columns(feed_statistics(ids, mask, self.unknown_id), column)

    def state(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "chunks": self.chunks}


def feed_statistics(ids: np.ndarray, mask: np.ndarray, unknown_id: int | None) -> np.ndarray:
    """(n, 2) tokens and unknown share of each text of a feed (special tokens included)."""
    tokens = mask.sum(axis=(0, 1)).astype(np.float64)
    unknown = ((ids == unknown_id) & (mask > 0)).sum(axis=(0, 1)) if unknown_id is not None else 0
    return np.column_stack([tokens, unknown / np.maximum(tokens, 1)])


def statistics_columns(stats: np.ndarray, column: str) -> dict[str, np.ndarray]:
    return {f"{column}.{name}": stats[:, j] for j, name in enumerate(TEXT_STATISTICS)}


def _texts(values: Any, column: str) -> list[str]:
    if hasattr(values, "to_pylist"):
        values = values.to_pylist()
    elif isinstance(values, np.ndarray):
        values = values.tolist()
    out = list(values)
    for row, value in enumerate(out):
        why = text_problem(value)
        if why is not None:
            raise SchemaError(f"row {row} of column '{column}' {why}")
    return out


def text_problem(value: Any) -> str | None:
    """Why ``value`` cannot be classified as a text (None when it can)."""
    if not isinstance(value, str):
        return f"is {value!r} ({type(value).__name__}): a text model needs text there"
    if not value.strip():
        return "is empty: there is no text to classify"
    return None
