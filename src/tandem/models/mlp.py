"""Multi-layer perceptron (PyTorch), trained by :func:`tandem.training.loop.fit_torch` and
exported with ``torch.onnx``.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from tandem.bundle.graph import OPSET, GraphBuilder
from tandem.data.schema import Task
from tandem.errors import ConfigError
from tandem.models.base import Family, FitContext
from tandem.training.loop import (
    EpochRecord,
    LoopConfig,
    TorchOptions,
    fit_torch,
    resolve_hardware,
    run_summary,
)
from tandem.training.metrics import metric_names, score

__all__ = [
    "MLP",
    "check_monitor",
    "embed_module",
    "evaluator",
    "export_onnx",
    "network",
    "network_from_graph",
    "objective",
]


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
        check_monitor(self.config, ctx.task, ctx.n_classes)
        options = ctx.torch or TorchOptions()
        hardware = resolve_hardware(options) if options.engine == "local" else None
        torch.manual_seed(ctx.seed)
        outputs = ctx.n_classes if ctx.task == "classification" else 1
        net = network(X.shape[1], [self.hidden, self.hidden], outputs, self.dropout)
        loss, targets, mean, std = objective(ctx.task, y, y_val)
        evaluate = evaluator(ctx.task, y_val, mean, std)
        data = (X, targets[0], X_val, targets[1])
        if options.engine == "ray":
            from tandem.training.distributed import fit_ray

            history = fit_ray(
                net, loss, data, config=self.config, seed=ctx.seed, deadline=ctx.deadline,
                on_epoch=ctx.epoch_done, evaluate=evaluate, options=options,
            )  # fmt: skip
        else:
            history = fit_torch(
                net, loss, data, config=self.config, seed=ctx.seed, deadline=ctx.deadline,
                on_epoch=ctx.epoch_done, evaluate=evaluate, hardware=hardware,
                checkpoint=ctx.checkpoint,
            )  # fmt: skip
        return self._freeze(net, ctx.task, mean, std, history)

    @classmethod
    def frozen(
        cls, net: nn.Sequential, *, task: str, y_mean: float, y_std: float, dropout: float,
        config: LoopConfig, history: list[EpochRecord],
    ) -> MLP:  # fmt: skip
        """A fitted family around a network trained elsewhere (pruned, or a distilled student),
        ready to predict, export and describe like one ``fit`` made."""
        model = cls(dropout=dropout, **dataclasses.asdict(config))
        return model._freeze(net, task, y_mean, y_std, history)

    def _freeze(
        self, net: nn.Sequential, task: str, mean: float, std: float, history: list[EpochRecord]
    ) -> MLP:
        net.cpu()
        self.history_ = history
        self.widths_ = [m.out_features for m in net if isinstance(m, nn.Linear)][:-1]
        self.scored_ = _Scored(net, task, mean, std).eval()
        self.task_ = task
        self.n_features_ = next(m for m in net if isinstance(m, nn.Linear)).in_features
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.scored_(torch.from_numpy(np.ascontiguousarray(X))).numpy()
        return np.asarray(out if self.task_ == "classification" else out[:, 0])

    def to_onnx(self, g: GraphBuilder, features: str) -> str:
        return embed_module(
            g, self.scored_, torch.zeros(1, self.n_features_, dtype=torch.float64), features, "mlp"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "hidden": self.widths_,
            "dropout": self.dropout,
            **run_summary(self.history_, self.config),
        }


def export_onnx(
    module: nn.Module, example: tuple[torch.Tensor, ...], inputs: dict[str, dict[int, str]],
    outputs: list[str],
) -> bytes:  # fmt: skip
    """``module`` as an ONNX graph at tandem's opset; ``inputs`` names the graph inputs (in
    ``example``'s order) with their dynamic axes, and the outputs' first axis is dynamic."""
    buffer = io.BytesIO()
    axes = {**inputs, **{name: {0: "n"} for name in outputs}}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript; for these networks both give the same graph (and it notes BERT's
        # control flow, which the export handles)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, buffer,  # type: ignore[arg-type]
            input_names=list(inputs), output_names=outputs, dynamic_axes=axes,
            opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    return buffer.getvalue()


def embed_module(
    g: GraphBuilder, module: nn.Module, example: torch.Tensor, features: str, hint: str
) -> str:
    """Export ``module`` (one input shaped like ``example``, rows first; one output) and wire
    it into ``g`` after ``features``; returns its output."""
    graph = export_onnx(module, (example,), {"x": {0: "n"}}, ["y"])
    (out,) = g.embed(onnx.load_from_string(graph), {"x": features}, hint)
    return out


def check_monitor(config: LoopConfig, task: Task, n_classes: int) -> None:
    """Refuse a ``monitor`` that is neither ``val_loss`` nor a validation metric of ``task``."""
    monitors = ["val_loss", *metric_names(task, n_classes)]
    if config.monitor not in monitors:
        raise ConfigError(
            f"cannot monitor '{config.monitor}' for {task}: choose {', '.join(monitors)}"
        )


def network(n_in: int, widths: Sequence[int], outputs: int, dropout: float) -> nn.Sequential:
    """Linear → ReLU → Dropout per hidden width, then a linear head (the state dict's keys are
    ``0.weight``, ``3.weight``, ...: three modules per hidden layer)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(n_in, width), nn.ReLU(), nn.Dropout(dropout)]
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, outputs))


def network_from_graph(graph: onnx.ModelProto, dropout: float) -> nn.Sequential:
    """The network of a frozen MLP, read back from its Bundle graph's initializers (named by
    the exporter after the state dict: ``<prefix>/net.0.weight``, ...)."""
    weights: dict[str, torch.Tensor] = {}
    for init in graph.graph.initializer:
        found = re.search(r"/net\.(\d+)\.(weight|bias)$", init.name)
        if found:
            array = numpy_helper.to_array(init).astype(np.float32)
            weights[f"{found[1]}.{found[2]}"] = torch.from_numpy(array.copy())
    layers = sorted({int(k.split(".")[0]) for k in weights})
    if (
        not layers
        or layers != list(range(0, 3 * len(layers), 3))
        or len(weights) != 2 * len(layers)
    ):
        raise ValueError("the graph holds no tandem MLP (linear layers net.0, net.3, ...)")
    heads = [weights[f"{i}.weight"] for i in layers]
    net = network(heads[0].shape[1], [w.shape[0] for w in heads[:-1]], heads[-1].shape[0], dropout)
    net.load_state_dict(weights)
    return net


def objective(
    task: str, y: np.ndarray, y_val: np.ndarray
) -> tuple[
    Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tuple[np.ndarray, np.ndarray],
    float,
    float,
]:
    """The training loss, the train / validation targets it expects, and the target's mean
    and spread (regression trains on standardised values; 0 and 1 for classification)."""
    if task == "classification":
        return nn.CrossEntropyLoss(), (y.astype(np.int64), y_val.astype(np.int64)), 0.0, 1.0
    mean, std = float(y.mean()), float(y.std() or 1.0)
    mse = nn.MSELoss()

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mse(pred.squeeze(1), target)  # type: ignore[no-any-return]

    scaled = (((y - mean) / std).astype(np.float32), ((y_val - mean) / std).astype(np.float32))
    return loss, scaled, mean, std


def evaluator(
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
