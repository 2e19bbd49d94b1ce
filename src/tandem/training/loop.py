"""The PyTorch training loop: mini-batches, AdamW, warmup + cosine schedule, validation every
epoch, early stopping with patience, and the best weights restored at the end.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["EpochRecord", "LoopConfig", "fit_torch"]


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Settings of :func:`fit_torch`; the defaults suit tabular data of 1k–1M rows."""

    max_epochs: int = 200
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 12

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be >= 1; got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"LoopConfig.lr must be > 0; got {self.lr}")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    lr: float
    seconds: float

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def _schedule(cfg: LoopConfig, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = max(1, cfg.warmup_epochs * steps_per_epoch)
    total = max(warmup + 1, cfg.max_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / (total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def fit_torch(
    module: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    config: LoopConfig,
    seed: int,
    deadline: float,
    on_epoch: Callable[..., None] | None = None,
) -> list[EpochRecord]:
    """Train ``module`` in place and leave it holding the weights of its best validation epoch.

    Args:
        module: maps a float32 batch (n, n_features) to predictions for ``loss_fn``.
        loss_fn: (predictions, targets) -> scalar loss.
        data: X_train, y_train, X_val, y_val as numpy arrays (X float, y as the loss expects).
        config: loop settings.
        seed: seeds weight order of batches; the same seed gives the same weights.
        deadline: ``time.monotonic()`` after which no new epoch starts.
        on_epoch: called after each epoch as ``on_epoch(epoch, train_loss=..., val_loss=...)``.

    Returns:
        One record per epoch run.
    """
    torch.manual_seed(seed)
    X, y, X_val, y_val = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    X, X_val = X.float(), X_val.float()
    generator = torch.Generator().manual_seed(seed)
    steps = max(1, math.ceil(len(X) / config.batch_size))
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, steps))
    best_loss, best_state, since_best = math.inf, copy.deepcopy(module.state_dict()), 0
    history: list[EpochRecord] = []
    for epoch in range(config.max_epochs):
        started = time.monotonic()
        module.train()
        order = torch.randperm(len(X), generator=generator)
        total = 0.0
        for i in range(steps):
            batch = order[i * config.batch_size : (i + 1) * config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(module(X[batch]), y[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        module.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(module(X_val), y_val))
        history.append(
            EpochRecord(
                epoch + 1,
                total / len(X),
                val_loss,
                float(scheduler.get_last_lr()[0]),
                time.monotonic() - started,
            )
        )
        if on_epoch is not None:
            on_epoch(epoch + 1, train_loss=history[-1].train_loss, val_loss=val_loss)
        if val_loss < best_loss - 1e-6:
            best_loss, best_state, since_best = val_loss, copy.deepcopy(module.state_dict()), 0
        else:
            since_best += 1
        if since_best >= config.patience or time.monotonic() > deadline:
            break
    module.load_state_dict(best_state)
    module.eval()
    return history
