"""The contract every model family follows.

A family is constructed with its hyperparameters only (nothing is learned in ``__init__``),
``fit`` learns state into attributes ending in ``_`` and returns ``self``, ``predict`` gives
the in-memory predictions, and ``to_onnx`` emits the same function as ONNX nodes. The
conformance test in ``tests/models/test_families.py`` runs every family through this contract.

Shapes: ``X`` is float64 of shape (n_rows, n_features) from the Preprocessor. For
classification ``y`` holds class codes 0..n_classes-1 and ``predict`` returns probabilities of
shape (n_rows, n_classes); for regression ``y`` is float64 and ``predict`` returns (n_rows,).
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np

from tandem.bundle.graph import GraphBuilder
from tandem.data.schema import Task
from tandem.errors import ConfigError

if TYPE_CHECKING:
    from tandem.training.checkpoint import Checkpointer
    from tandem.training.loop import TorchOptions

__all__ = ["Family", "FitContext", "configured", "probabilities_head"]


@dataclass(frozen=True, kw_only=True)
class FitContext:
    """What a family needs to know about the run besides the data."""

    task: Task
    n_classes: int
    seed: int
    #: ``time.monotonic()`` value after which the family should stop improving and return
    deadline: float
    #: told of each finished epoch (a pass over the data: an epoch, a boosting round, a fit
    #: of a grid point) with its number from 1 and its losses, for the cost ledger
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    #: device, precision and engine of a torch family (None: CPU, fp32, in process)
    torch: TorchOptions | None = None
    #: where a loop saves its state and whether it resumes (final fits only, not CV folds)
    checkpoint: Checkpointer | None = None

    def epoch_done(self, epoch: int, **losses: float) -> None:
        if self.on_epoch is not None:
            self.on_epoch(epoch, losses)

    @property
    def time_left(self) -> float:
        return self.deadline - time.monotonic()


class Family(ABC):
    """Base of the model families; see the module docstring for the contract."""

    name: ClassVar[str]

    @classmethod
    def settings(cls) -> list[str]:
        """The keywords the constructor takes (what ``--param`` may set)."""
        return [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]

    @abstractmethod
    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, ctx: FitContext
    ) -> Family: ...

    @abstractmethod
    def predict(self, X: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def to_onnx(self, g: GraphBuilder, features: str) -> str:
        """Emit the model; ``features`` is the (N, n_features) double tensor. Returns the name
        of the (N, n_classes) double probabilities, or the (N, 1) double values."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Hyperparameters and size of the fitted model, as JSON, for the manifest."""


def probabilities_head(g: GraphBuilder, scores: str, *, binary_logit: bool) -> str:
    """Scores to probabilities: one logit → [1-p, p] by sigmoid, else softmax over classes."""
    if not binary_logit:
        return g.node("Softmax", [scores], axis=1)
    p = g.node("Sigmoid", [scores])
    return g.node("Concat", [g.node("Sub", [g.const(np.array([[1.0]])), p]), p], axis=1)


class _Configurable(Protocol):
    @classmethod
    def settings(cls) -> list[str]: ...


M = TypeVar("M", bound=_Configurable)


def configured(
    cls: type[M], label: str, params: Mapping[str, Any] | None, *, also: Sequence[str] = ()
) -> M:
    """``cls(**params)``, refused with a ConfigError unless every key is one of its settings
    (the message lists them, and ``also``: settings the caller took out of ``params``) and the
    constructor accepts the values: checked before any data is read."""
    accepted = [*also, *cls.settings()]
    unknown = sorted(set(params or {}) - set(cls.settings()))
    if unknown:
        raise ConfigError(f"{label} has no setting(s) {unknown}; it takes {accepted or 'none'}")
    try:
        return cls(**(params or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {exc}") from exc
