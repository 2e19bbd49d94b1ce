"""Multi-layer perceptron (PyTorch), trained by :func:`tandem.training.loop.fit_torch` and
exported with ``torch.onnx``.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from tandem.bundle.graph import OPSET, GraphBuilder
from tandem.errors import ConfigError
from tandem.models.base import Family, FitContext
from tandem.training.loop import LoopConfig, TorchOptions, fit_torch, resolve_hardware
from tandem.training.metrics import metric_names, score

__all__ = ["MLP"]


class _Scored(nn.Module):
    """What gets exported: float64 features in, float64 probabilities or values out."""

    def __init__(self, net: nn.Module, task: str, y_mean: float, y_std: float) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.y_mean = y_mean
        self.y_std = y_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # standardised features beyond ±1e6 are outliers anyway; unclipped, a huge value
        # overflows float32 and every probability becomes NaN
        out = self.net(x.clamp(-1e6, 1e6).float())
        if self.task == "classification":
            return torch.softmax(out, dim=1).double()
        return (out * self.y_std + self.y_mean).double()  # type: ignore[no-any-return]


class MLP(Family):
    """Two hidden ReLU layers; regression targets are standardised for training.

    Besides ``hidden`` and ``dropout`` it takes the loop's hyperparameters as keywords
    (``max_epochs``, ``batch_size``, ``lr``, ``schedule``, ``clip_norm``, ``monitor``, ...:
    see :class:`~tandem.training.loop.LoopConfig`)."""

    name = "mlp"

    def __init__(self, *, hidden: int = 128, dropout: float = 0.1, **loop: Any) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.config = LoopConfig(**loop)

    @classmethod
    def settings(cls) -> list[str]:
        return ["hidden", "dropout", *LoopConfig.__dataclass_fields__]

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, ctx: FitContext
    ) -> MLP:
        monitors = ["val_loss", *metric_names(ctx.task, ctx.n_classes)]
        if self.config.monitor not in monitors:
            raise ConfigError(
                f"cannot monitor '{self.config.monitor}' for {ctx.task}: choose {', '.join(monitors)}"
            )
        options = ctx.torch or TorchOptions()
        hardware = resolve_hardware(options) if options.engine == "local" else None
        torch.manual_seed(ctx.seed)
        outputs = ctx.n_classes if ctx.task == "classification" else 1
        net = nn.Sequential(
            nn.Linear(X.shape[1], self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden, outputs),
        )  # fmt: skip
        if ctx.task == "classification":
            mean, std = 0.0, 1.0
            loss: Any = nn.CrossEntropyLoss()
            targets = (y.astype(np.int64), y_val.astype(np.int64))
        else:
            mean, std = float(y.mean()), float(y.std() or 1.0)
            mse = nn.MSELoss()

            def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return mse(pred.squeeze(1), target)  # type: ignore[no-any-return]

            targets = (
                ((y - mean) / std).astype(np.float32),
                ((y_val - mean) / std).astype(np.float32),
            )
        evaluate = _evaluator(ctx.task, y_val, mean, std)
        data = (X, targets[0], X_val, targets[1])
        if options.engine == "ray":
            from tandem.training.distributed import fit_ray

            self.history_ = fit_ray(
                net, loss, data, config=self.config, seed=ctx.seed, deadline=ctx.deadline,
                on_epoch=ctx.epoch_done, evaluate=evaluate, options=options,
            )  # fmt: skip
        else:
            self.history_ = fit_torch(
                net, loss, data, config=self.config, seed=ctx.seed, deadline=ctx.deadline,
                on_epoch=ctx.epoch_done, evaluate=evaluate, hardware=hardware,
                checkpoint=ctx.checkpoint,
            )  # fmt: skip
        net.cpu()
        self.scored_ = _Scored(net, ctx.task, mean, std).eval()
        self.task_ = ctx.task
        self.n_features_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.scored_(torch.from_numpy(np.ascontiguousarray(X))).numpy()
        return np.asarray(out if self.task_ == "classification" else out[:, 0])

    def to_onnx(self, g: GraphBuilder, features: str) -> str:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript; for a fixed MLP both give the same graph
            warnings.simplefilter("ignore")
            torch.onnx.export(
                self.scored_, (torch.zeros(1, self.n_features_, dtype=torch.float64),), buffer,  # type: ignore[arg-type]
                input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                opset_version=OPSET, dynamo=False,
            )  # fmt: skip
        (out,) = g.embed(onnx.load_from_string(buffer.getvalue()), {"x": features}, "mlp")
        return out

    def describe(self) -> dict[str, Any]:
        values = [h.value(self.config.monitor) for h in self.history_]
        best = np.argmin(values) if self.config.lower_is_better else np.argmax(values)
        return {
            "hidden": [self.hidden, self.hidden],
            "dropout": self.dropout,
            "loop": dataclasses.asdict(self.config),
            "epochs": len(self.history_),
            "best_epoch": int(best) + 1,
            "history": [h.to_json() for h in self.history_],
        }


def _evaluator(
    task: str, y_val: np.ndarray, mean: float, std: float
) -> Callable[[np.ndarray], dict[str, float]]:
    """The validation metrics of the network's raw outputs (logits, or standardised values)."""

    def evaluate(outputs: np.ndarray) -> dict[str, float]:
        if task == "classification":
            z = outputs.astype(np.float64)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            return score("classification", y_val, z / z.sum(axis=1, keepdims=True))
        return score("regression", y_val, outputs[:, 0].astype(np.float64) * std + mean)

    return evaluate
