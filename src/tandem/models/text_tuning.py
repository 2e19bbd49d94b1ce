"""Fine-tuning the encoder's top layers with the head (``fine_tune_layers`` > 0).

The layers below the tuned ones do not change, so they run once over every chunk of every
text, and their output (only the real tokens, no padding) is kept in memory; each epoch then
runs only the top layers, forward and backward, over batches of texts. Two learning rates:
the pretrained layers move slowly (``encoder_lr``), the head at :data:`HEAD_LR_RATIO` times
that; both warm up over the first tenth of the steps, then fall linearly to zero. The epoch
with the best validation accuracy is kept.

This reaches into ``transformers``' BERT (its embeddings, its layers and how it builds their
attention masks), so the text extra pins ``transformers`` 5.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from tandem.models.text import TextClassifier

__all__ = ["fine_tune"]

#: texts per optimizer step
BATCH = 16
#: the head's learning rate while tuning, as a multiple of the encoder's (at most the loop's
#: ``lr``): at the loop's 1e-2 the first tuning epoch undid the trained head (BBC News, all six
#: layers: validation 0.964 → 0.919, and no tuning epoch beat the frozen model, test 0.970);
#: at 20 × 5e-5 with the schedule below, validation rose each epoch, test 0.979
HEAD_LR_RATIO = 20
#: the share of steps over which both learning rates rise from zero; then they fall linearly
#: to zero at the last step
WARMUP = 0.1


def fine_tune(
    model: TextClassifier, feeds: dict[str, dict[str, np.ndarray]], y: dict[str, np.ndarray],
    *, seed: int, deadline: float, on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> np.ndarray:  # fmt: skip
    """Train the top ``model.fine_tune_layers`` layers of ``model.model_``'s encoder and its
    head in place (see the module docstring); the kept epoch's probabilities on the
    validation texts."""
    bert: Any = model.model_.encoder.bert
    layers: Any = bert.encoder.layer
    top = layers[len(layers) - model.fine_tune_layers :]
    cached = {
        k: _bottom(bert, layers[: len(layers) - model.fine_tune_layers], f)
        for k, f in feeds.items()
    }
    head = model.model_.head
    head_lr = min(model.config.lr, HEAD_LR_RATIO * model.encoder_lr)
    params = [{"params": [p for layer in top for p in layer.parameters()], "lr": model.encoder_lr},
              {"params": list(head.parameters()), "lr": head_lr}]  # fmt: skip
    optimizer = torch.optim.AdamW(params, weight_decay=0.01)
    train = cached["train"]
    steps = model.fine_tune_epochs * -(-len(train) // BATCH)
    warm = max(1, round(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min((k + 1) / warm, max(0.0, (steps - k) / max(1, steps - warm)))
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    proba = _proba(bert, top, head, cached["validation"])
    best = (_accuracy(proba, y["validation"]), _state(top, head), proba)
    for epoch in range(1, model.fine_tune_epochs + 1):
        if time.monotonic() > deadline:
            break
        for layer in top:
            layer.train()
        losses = []
        order = rng.permutation(len(train))
        for start in range(0, len(train), BATCH):
            rows = order[start : start + BATCH]
            scores = head(_pooled(bert, top, [train[i] for i in rows]))
            loss = nn.functional.cross_entropy(scores, torch.from_numpy(y["train"][rows]))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        proba = _proba(bert, top, head, cached["validation"])
        accuracy = _accuracy(proba, y["validation"])
        if on_epoch is not None:
            on_epoch(epoch, {"train_loss": float(np.mean(losses)), "accuracy": accuracy})
        if accuracy > best[0]:
            best = (accuracy, _state(top, head), proba)
    for layer, state in zip([*top, head], best[1], strict=True):
        layer.load_state_dict(state)
        layer.eval()
    return best[2]


def _state(top: Any, head: nn.Module) -> list[dict[str, Any]]:
    return [copy.deepcopy(m.state_dict()) for m in [*top, head]]


def _masks(bert: Any, hidden: torch.Tensor, mask: torch.Tensor) -> Any:
    return bert._create_attention_masks(
        attention_mask=mask, encoder_attention_mask=None, embedding_output=hidden,
        encoder_hidden_states=None, past_key_values=None,
    )[0]  # fmt: skip


def _run(layers: Any, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
    for layer in layers:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _bottom(bert: Any, layers: Any, feed: dict[str, np.ndarray]) -> list[list[torch.Tensor]]:
    """Per text, per chunk: the hidden states of its real tokens after ``layers``."""
    ids, mask = feed["input_ids"], feed["attention_mask"]
    out: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for i in range(ids.shape[2]):
            chunks = [j for j in range(ids.shape[1]) if mask[:, j, i].any()]
            t = int(mask[:, chunks, i].sum(axis=0).max())
            m = torch.from_numpy(np.ascontiguousarray(mask[:t, chunks, i].T))
            hidden = bert.embeddings(
                input_ids=torch.from_numpy(np.ascontiguousarray(ids[:t, chunks, i].T))
            )
            hidden = _run(layers, hidden, _masks(bert, hidden, m))
            out.append([hidden[c, : int(m[c].sum())] for c in range(len(chunks))])
    return out


def _pooled(bert: Any, top: Any, texts: list[list[torch.Tensor]]) -> torch.Tensor:
    """The texts' embeddings through the top layers: each chunk mean-pooled and normalised,
    the chunks of a text averaged (as :class:`~tandem.models.text.ChunkedTextModel` does)."""
    chunks = [c for text in texts for c in text]
    t = max(len(c) for c in chunks)
    hidden = torch.zeros(len(chunks), t, chunks[0].shape[1])
    mask = torch.zeros(len(chunks), t, dtype=torch.int64)
    for j, c in enumerate(chunks):
        hidden[j, : len(c)], mask[j, : len(c)] = c, 1
    hidden = _run(top, hidden, _masks(bert, hidden, mask))
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=1)
    counts = [len(text) for text in texts]
    return torch.stack([part.mean(dim=0) for part in torch.split(pooled, counts)])


def _proba(bert: Any, top: Any, head: nn.Module, texts: list[list[torch.Tensor]]) -> np.ndarray:
    """Probabilities (n, classes), float64, of ``texts`` (their bottom layers' output)."""
    for layer in top:
        layer.eval()
    with torch.no_grad():
        scores = torch.cat(
            [head(_pooled(bert, top, texts[s : s + 64])) for s in range(0, len(texts), 64)]
        )
        return torch.softmax(scores, dim=1).double().numpy()


def _accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(proba.argmax(axis=1) == y))
