"""The optimizations that retrain: structured pruning and knowledge distillation.

Both rebuild the version's data from its recipe (same rows, split and preprocessing as its
training run: :func:`tandem.training.train.rebuild`), train with
:func:`tandem.training.loop.fit_torch` on the train split with early stopping on the
validation split, and freeze the result through the path training uses (preprocessing graph +
MLP, checked for parity). The test split stays the gate's holdout: neither step sees it.

**Pruning** removes whole hidden neurons of an MLP, so every matrix product that remains is
smaller (masking weights to zero, unstructured pruning, leaves dense products the same size
and gives no speed on a CPU). A neuron's importance is the norm of its incoming weights
(with its bias) times the norm of its outgoing weights: a ReLU network computes the same
function when one is scaled by ``c`` and the other by ``1/c``, and the product is the measure
that does not change. The lowest ``amount`` of each hidden layer goes, then the smaller
network is fine-tuned at a tenth of the original learning rate.

**Distillation** trains a small student MLP on the teacher's outputs (any registered model:
a GBDT, a large MLP, a linear model). For classes, the loss mixes the KL divergence to the
teacher's probabilities softened by a temperature ``T`` (scaled by ``T²`` so its gradients
keep their size as ``T`` grows) with weight ``alpha``, and the cross-entropy with the true
labels with weight ``1 - alpha``; for values, the squared error to the teacher's prediction
and to the truth, mixed the same way.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional

from tandem.bundle.store import Bundle
from tandem.data.profile import output_profile
from tandem.errors import ConfigError, UsageError
from tandem.inference.predictor import Predictor
from tandem.models.mlp import (
    MLP,
    check_monitor,
    evaluator,
    network,
    network_from_graph,
    objective,
)
from tandem.monitoring.predictions import output_columns
from tandem.training.loop import LoopConfig, fit_torch
from tandem.training.train import Rebuilt, freeze, rebuild

__all__ = ["DistillSpec", "Retrained", "distill", "prune"]


@dataclass(frozen=True)
class Retrained:
    """A retrained candidate: its graph, the fitted family (for the manifest's description),
    its outputs' reference profile (for drift), what was done, and the rows it trained on."""

    graph: bytes
    family: MLP
    #: the family's description, for the manifest (computed before anything is recorded)
    described: dict[str, Any]
    reference_outputs: dict[str, Any]
    details: dict[str, Any]
    rows: int
    #: the rebuilt test split (columns, targets): the gate's default holdout
    test: tuple[dict[str, np.ndarray], np.ndarray]


@dataclass(frozen=True, kw_only=True)
class DistillSpec:
    """The student and how it learns: ``hidden`` units in each of its two layers, the
    softening ``temperature`` (classes only), ``alpha`` the weight of the teacher's targets
    (``1 - alpha``: the true labels'), ``dropout``, and the loop's settings (``max_epochs``,
    ``lr``, ``monitor``, ...: see :class:`~tandem.training.loop.LoopConfig`)."""

    hidden: int = 32
    temperature: float = 4.0
    alpha: float = 0.7
    dropout: float = 0.0
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> DistillSpec:
        """From ``{"hidden": 32, "temperature": 2, "max_epochs": 50, ...}``."""
        own = {"hidden", "temperature", "alpha", "dropout"}
        known = sorted(own | set(LoopConfig.__dataclass_fields__))
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise UsageError(
                f"--distill has no setting(s) {unknown}: it takes {', '.join(known)} "
                "(e.g. --distill hidden=32,temperature=4,alpha=0.7)"
            )
        for key in ("temperature", "alpha", "dropout"):
            value = settings.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"--distill {key} must be a number; got {value!r}")
        hidden = settings.get("hidden", 1)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise UsageError(f"--distill hidden must be a whole number >= 1; got {hidden!r}")
        try:
            loop = LoopConfig(**{k: v for k, v in settings.items() if k not in own})
            spec = cls(**{k: v for k, v in settings.items() if k in own}, loop=loop)
        except (TypeError, ValueError, ConfigError) as exc:
            raise UsageError(f"--distill: {exc}") from exc
        if not 0 <= spec.alpha <= 1:
            raise UsageError(f"--distill alpha weighs the teacher in [0, 1]; got {spec.alpha}")
        if not spec.temperature > 0:
            raise UsageError(f"--distill temperature must be > 0; got {spec.temperature}")
        if not 0 <= spec.dropout < 1:
            raise UsageError(f"--distill dropout must be in [0, 1); got {spec.dropout}")
        return spec

    def label(self, task: str) -> str:
        """How the candidate is named (tag, description); the temperature softens classes
        only, so a regression's label leaves it out."""
        softened = f"T={self.temperature:g}, " if task == "classification" else ""
        return f"distill (mlp {self.hidden}×{self.hidden}, {softened}α={self.alpha:g})"


def prune(bundle: Bundle, amount: float, *, epochs: int = 20) -> Retrained:
    """Remove the ``amount`` (0–1) least important neurons of each hidden layer of an MLP
    Bundle, fine-tune for at most ``epochs`` epochs (0: not at all), and re-export."""
    manifest = bundle.manifest
    ref = f"{manifest.name}:{manifest.version}"
    if manifest.family != "mlp":
        raise UsageError(
            f"--prune removes neurons of an MLP; {ref} is a {manifest.family} model: "
            "distill it into a small MLP with --distill instead"
        )
    if not 0 < amount < 1:
        raise UsageError(f"--prune takes the share of neurons to remove, in (0, 1); got {amount}")
    if epochs < 0:
        raise UsageError(f"fine-tuning epochs must be >= 0; got {epochs}")
    described = manifest.details.get("model", {})
    dropout = float(described.get("dropout", 0.0))
    made = manifest.details.get("optimization", {})
    if str(made.get("technique", "")).startswith("int8"):
        raise UsageError(
            f"{ref} is int8 ({made['technique']} of {made.get('from')}): prune the float "
            f"version {made.get('from')}, then quantize what pruning registers"
        )
    try:
        net = network_from_graph(onnx.load_from_string(bundle.graph), dropout)
    except ValueError as exc:
        raise UsageError(
            f"cannot prune {ref}: {exc}; retrain it with this tandem version"
        ) from None
    data = rebuild(manifest, "pruning fine-tunes on them; retrain, then prune the new version")
    small, kept = _remove_neurons(net, amount)
    loss, targets, mean, std = objective(manifest.task, data.y["train"], data.y["validation"])
    trained = LoopConfig(**described.get("loop", {}))
    # a tenth of the learning rate, decaying; patience scaled to the shorter run
    config = dataclasses.replace(trained, max_epochs=max(1, epochs), warmup_epochs=0,
                                 lr=trained.lr / 10,
                                 patience=min(trained.patience, max(3, epochs // 4)))  # fmt: skip
    history = []
    if epochs:
        history = fit_torch(
            small, loss, (data.X["train"], targets[0], data.X["validation"], targets[1]),
            config=config, seed=data.seed, deadline=float("inf"),
            evaluate=evaluator(manifest.task, data.y["validation"], mean, std),
        )  # fmt: skip
    family = MLP.frozen(small, task=manifest.task, y_mean=mean, y_std=std, dropout=dropout,
                        config=config, history=history)  # fmt: skip
    widths = [m.out_features for m in net if isinstance(m, nn.Linear)][:-1]
    details = {"amount": amount, "hidden_before": widths, "hidden_after": [len(k) for k in kept],
               "fine_tune_epochs": len(history)}  # fmt: skip
    return _retrained(bundle, data, family, details)


def distill(bundle: Bundle, spec: DistillSpec) -> Retrained:
    """Train a small MLP on ``bundle``'s outputs (the teacher) and the true targets."""
    manifest = bundle.manifest
    task = manifest.task
    try:
        check_monitor(spec.loop, task, len(manifest.classes))
    except ConfigError as exc:
        raise UsageError(f"--distill: {exc}") from None
    data = rebuild(manifest, "distillation trains the student on them")
    teacher = Predictor(bundle)
    taught = {k: teacher.forward(teacher.encode(teacher.preprocess(data.columns[k])))
              for k in ("train", "validation")}  # fmt: skip
    _, truth, mean, std = objective(task, data.y["train"], data.y["validation"])
    if task == "classification":
        soft = {k: _soften(v, spec.temperature) for k, v in taught.items()}
        outputs = len(manifest.classes)
    else:
        soft = {k: ((v[:, :1] - mean) / std) for k, v in taught.items()}
        outputs = 1
    # one float32 target matrix per split: the true target, then the teacher's
    targets = [np.column_stack([t.astype(np.float32), soft[k].astype(np.float32)])
               for t, k in zip(truth, ("train", "validation"), strict=True)]  # fmt: skip
    seed = data.seed
    torch.manual_seed(seed)
    student = network(data.X["train"].shape[1], [spec.hidden] * 2, outputs, spec.dropout)
    history = fit_torch(
        student, _distill_loss(task, spec), (data.X["train"], targets[0], data.X["validation"], targets[1]),
        config=spec.loop, seed=seed, deadline=float("inf"),
        evaluate=evaluator(task, data.y["validation"], mean, std),
    )  # fmt: skip
    family = MLP.frozen(student, task=task, y_mean=mean, y_std=std, dropout=spec.dropout,
                        config=spec.loop, history=history)  # fmt: skip
    details = {"teacher": {"family": manifest.family, "model": f"{manifest.name}:{manifest.version}"},
               "hidden": [spec.hidden] * 2, "temperature": spec.temperature, "alpha": spec.alpha,
               "epochs": len(history)}  # fmt: skip
    return _retrained(bundle, data, family, details)


def _remove_neurons(net: nn.Sequential, amount: float) -> tuple[nn.Sequential, list[np.ndarray]]:
    """A copy of ``net`` without the least important ``amount`` of each hidden layer's
    neurons, and the indices kept in each layer."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    kept = []
    with torch.no_grad():
        for layer, after in itertools.pairwise(linears):
            incoming = torch.cat([layer.weight, layer.bias[:, None]], dim=1).norm(dim=1)
            importance = incoming * after.weight.norm(dim=0)
            keep = max(1, round(layer.out_features * (1 - amount)))
            kept.append(np.sort(importance.argsort(descending=True)[:keep].numpy()))
        dropout = next((m.p for m in net if isinstance(m, nn.Dropout)), 0.0)
        small = network(linears[0].in_features, [len(k) for k in kept], linears[-1].out_features,
                        dropout)  # fmt: skip
        rows: np.ndarray | slice = slice(None)
        for i, (old, new) in enumerate(zip(linears, (m for m in small if isinstance(m, nn.Linear)),
                                           strict=True)):  # fmt: skip
            out = kept[i] if i < len(kept) else slice(None)
            new.weight.copy_(old.weight[out][:, rows])
            new.bias.copy_(old.bias[out])
            rows = out
    return small, kept


def _soften(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities at ``temperature``: softmax(log p / T)."""
    z = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


def _distill_loss(task: str, spec: DistillSpec) -> Any:
    t, alpha = spec.temperature, spec.alpha

    def classes(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hard = functional.cross_entropy(logits, target[:, 0].long())
        taught = functional.kl_div(
            functional.log_softmax(logits / t, dim=1), target[:, 1:], reduction="batchmean"
        )
        return alpha * t * t * taught + (1 - alpha) * hard

    def values(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = pred[:, 0]
        return alpha * functional.mse_loss(p, target[:, 1]) + (1 - alpha) * functional.mse_loss(
            p, target[:, 0]
        )

    return classes if task == "classification" else values


def _retrained(bundle: Bundle, data: Rebuilt, family: MLP, details: dict[str, Any]) -> Retrained:
    manifest = bundle.manifest
    graph = freeze(data.preprocessor, family, manifest.task, data.columns["test"], data.X["test"],
                   data.y["train"])  # fmt: skip
    outputs = output_profile(output_columns(manifest.outputs, family.predict(data.X["validation"])))
    return Retrained(graph, family, family.describe(), outputs, details, len(data.y["train"]),
                     (data.columns["test"], data.y["test"]))  # fmt: skip
