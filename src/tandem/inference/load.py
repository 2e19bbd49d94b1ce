"""``tandem.load``: a Predictor from a registry reference or a Bundle directory."""

from __future__ import annotations

from pathlib import Path

from tandem.bundle import load_bundle
from tandem.inference.predictor import Predictor
from tandem.registry import Registry

__all__ = ["load"]


def load(
    model: str | Path, *, registry: Registry | None = None, threads: int | None = None
) -> Predictor:
    """Load and verify a model for prediction.

    Args:
        model: ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` from the registry, or the path of a
            Bundle directory.
        registry: the registry to look in (default: the one ``TANDEM_HOME`` points at).
        threads: ONNX Runtime intra-op threads (default: one per core).

    Example:
        >>> predictor = load("rain@champion")  # doctest: +SKIP
        >>> predictor.predict(rows)  # doctest: +SKIP
    """
    if isinstance(model, Path) or Path(model).is_dir():
        return Predictor(load_bundle(model), threads=threads)
    if registry is not None:
        version = registry.get(model)
        return Predictor(load_bundle(version.path, expected_digest=version.digest), threads=threads)
    with Registry() as own:
        version = own.get(model)
    return Predictor(load_bundle(version.path, expected_digest=version.digest), threads=threads)
