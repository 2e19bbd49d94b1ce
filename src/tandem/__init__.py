"""tandem: train a model, freeze it into a verified Bundle, register, predict, and measure.

The public surface is listed in ``__all__``; ``tests/test_public_api.py`` holds it fixed.
Training names (``train``) load lazily, so ``import tandem.inference`` pulls in no torch,
scikit-learn or LightGBM.

Example:
    >>> import tandem
    >>> result = tandem.train("weather.csv", target="rain", name="rain")  # doctest: +SKIP
    >>> tandem.load("rain").predict([{"temperature": 0.4, ...}])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tandem.bundle import Bundle, Manifest, freeze, load_bundle
from tandem.config import Settings
from tandem.errors import (
    BundleError,
    ConfigError,
    DataError,
    NotFoundError,
    RegistryError,
    SchemaError,
    TandemError,
    TrainingError,
    UsageError,
)
from tandem.inference import Predictor, load
from tandem.registry import ModelVersion, Registry

if TYPE_CHECKING:
    from tandem.training.train import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "BundleError",
    "ConfigError",
    "DataError",
    "Manifest",
    "ModelVersion",
    "NotFoundError",
    "Predictor",
    "Registry",
    "RegistryError",
    "SchemaError",
    "Settings",
    "TandemError",
    "TrainResult",
    "TrainingError",
    "UsageError",
    "__version__",
    "freeze",
    "load",
    "load_bundle",
    "train",
]

_LAZY = {"train", "TrainResult"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import tandem.training.train

        return getattr(tandem.training.train, name)
    raise AttributeError(f"module 'tandem' has no attribute {name!r}")
