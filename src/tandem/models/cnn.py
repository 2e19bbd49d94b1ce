"""A small convolutional network for image classification (PyTorch, exported to ONNX).

Two blocks of two 3×3 convolutions (batch-normalised, ReLU), each block ending in a 2×2 max
pool while the map is at least 4 pixels wide; global average pooling; dropout; a linear head.
``width`` channels in the first block, twice that in the second: 32 gives ~65k weights, which
reaches 98–99 % on scikit-learn's 8×8 digits and trains in seconds on a CPU.

Training shifts each image by up to ``shift`` of its size at random (padding by replication)
while the network is in training mode; the exported, evaluating network has no such step.
It is trained by the same loop as the MLP (:func:`tandem.training.loop.fit_torch`: early
stopping on validation, schedules, checkpoints) on the tensors the Bundle's own image
preprocessing makes (:class:`tandem.features.images.ImagePreprocessor`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from tandem.bundle.graph import GraphBuilder
from tandem.errors import ConfigError
from tandem.models.base import Family, FitContext
from tandem.models.mlp import check_monitor, embed_module, evaluator
from tandem.training.loop import (
    EpochRecord,
    LoopConfig,
    TorchOptions,
    fit_torch,
    resolve_hardware,
    run_summary,
)

__all__ = ["CNN"]


class _Shift(nn.Module):
    """Random translation by up to ``fraction`` of the size, in training mode only."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.fraction <= 0:
            return x
        h, w = x.shape[-2:]
        dy, dx = max(1, round(h * self.fraction)), max(1, round(w * self.fraction))
        padded = nn.functional.pad(x, (dx, dx, dy, dy), mode="replicate")
        top = int(torch.randint(0, 2 * dy + 1, ()).item())
        left = int(torch.randint(0, 2 * dx + 1, ()).item())
        return padded[..., top : top + h, left : left + w]


def _block(n_in: int, n_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a in (n_in, n_out):
        layers += [nn.Conv2d(a, n_out, 3, padding=1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU()]
    return layers + ([nn.MaxPool2d(2)] if pool else [])


def network(channels: int, size: tuple[int, int], classes: int, width: int, dropout: float,
            shift: float) -> nn.Sequential:  # fmt: skip
    side = min(size)
    first_pool, second_pool = side >= 4, side >= 8
    return nn.Sequential(
        _Shift(shift),
        *_block(channels, width, first_pool),
        *_block(width, 2 * width, second_pool),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(2 * width, classes),
    )


class _Probabilities(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1).double()


class CNN(Family):
    """See the module docstring. Takes the loop's hyperparameters as keywords too."""

    name = "cnn"

    def __init__(
        self, *, width: int = 32, dropout: float = 0.2, shift: float = 0.125, **loop: Any
    ) -> None:
        if width < 1:
            raise ConfigError(f"width must be >= 1; got {width}")
        if not 0 <= shift < 0.5:
            raise ConfigError(f"shift is a fraction of the image size in [0, 0.5); got {shift}")
        loop.setdefault("max_epochs", 60)
        loop.setdefault("batch_size", 64)
        loop.setdefault("patience", 10)
        self.width, self.dropout, self.shift = width, dropout, shift
        self.config = LoopConfig(**loop)

    @classmethod
    def settings(cls) -> list[str]:
        return ["width", "dropout", "shift", *LoopConfig.__dataclass_fields__]

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, ctx: FitContext
    ) -> CNN:
        """``X``: (n, C, H, W) float32 from the image preprocessing; ``y`` class codes."""
        check_monitor(self.config, ctx.task, ctx.n_classes)
        options = ctx.torch or TorchOptions()
        if options.engine != "local":
            raise ConfigError("image networks train in one process: leave out --engine ray")
        hardware = resolve_hardware(options)
        torch.manual_seed(ctx.seed)
        size = (int(X.shape[2]), int(X.shape[3]))
        net = network(int(X.shape[1]), size, ctx.n_classes, self.width, self.dropout, self.shift)
        data = (X, y.astype(np.int64), X_val, y_val.astype(np.int64))
        self.history_: list[EpochRecord] = fit_torch(
            net, nn.CrossEntropyLoss(), data, config=self.config, seed=ctx.seed,
            deadline=ctx.deadline, on_epoch=ctx.epoch_done,
            evaluate=evaluator("classification", y_val, 0.0, 1.0), hardware=hardware,
            checkpoint=ctx.checkpoint,
        )  # fmt: skip
        self.scored_ = _Probabilities(net.cpu()).eval()
        self.input_shape_ = tuple(int(d) for d in X.shape[1:])
        self.parameters_ = sum(p.numel() for p in net.parameters())
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(X), 1024):
                batch = torch.from_numpy(np.ascontiguousarray(X[start : start + 1024]))
                out.append(self.scored_(batch.float()).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def to_onnx(self, g: GraphBuilder, features: str) -> str:
        example = torch.zeros(1, *self.input_shape_, dtype=torch.float32)
        return embed_module(g, self.scored_, example, features, "cnn")

    def describe(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "dropout": self.dropout,
            "shift": self.shift,
            "parameters": self.parameters_,
            "input": list(self.input_shape_),
            **run_summary(self.history_, self.config),
        }
