"""``tandem.load``: a Predictor from a registry reference or a Bundle directory."""

from __future__ import annotations

import os
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
    if _is_bundle_path(model):
        return Predictor(load_bundle(model), threads=threads)
    if registry is None:
        with Registry() as own:
            return load(model, registry=own, threads=threads)
    version = registry.get(str(model))
    return Predictor(load_bundle(version.path, expected_digest=version.digest), threads=threads)


def _is_bundle_path(model: str | Path) -> bool:
    # a bare word is a registry name even when a folder of that name happens to be in the
    # working directory (a data folder named like its model is common)
    if isinstance(model, Path) or os.sep in model or (os.altsep and os.altsep in model):
        return True
    return (Path(model) / "manifest.json").is_file()
