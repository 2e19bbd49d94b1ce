"""The exceptions tandem raises, and what a caller can do about each.

    TandemError                 base of everything below; never raised itself
    ├── UsageError              the caller asked for something invalid (CLI exit code 2)
    │   ├── DataError           a dataset cannot be used for training (missing target, empty, ...)
    │   ├── SchemaError         rows given to a Predictor do not match the Bundle's input signature
    │   ├── NotFoundError       a model, version or alias that the registry does not hold
    │   └── ConfigError         a setting or option with an impossible value
    ├── BundleError             a Bundle is tampered, truncated, incomplete or of an unknown format
    ├── RegistryError           the registry database or artifact store failed
    └── TrainingError           a training run failed for a reason other than bad input

Every message says what was received, what was expected and how to fix it. Third-party
exceptions are wrapped at the boundary with ``raise XError(...) from exc`` so callers catch
only tandem's own types.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "NotFoundError",
    "RegistryError",
    "SchemaError",
    "TandemError",
    "TrainingError",
    "UsageError",
]


class TandemError(Exception):
    """Base class of every error tandem raises on purpose."""

    #: process exit code the CLI uses for this kind of error
    exit_code = 1


class UsageError(TandemError):
    """The caller asked for something invalid; fixing the input fixes it."""

    exit_code = 2


class DataError(UsageError):
    """A dataset cannot be used as given (unreadable, empty, missing target, one class...)."""


class SchemaError(UsageError):
    """Rows given for prediction do not match the Bundle's input signature."""


class NotFoundError(UsageError):
    """A model name, version or alias that the registry does not hold."""


class ConfigError(UsageError):
    """A setting or option with a value outside what is allowed."""


class BundleError(TandemError):
    """A Bundle failed verification: a file is missing, truncated, altered or of unknown format."""


class RegistryError(TandemError):
    """The registry database or artifact folder could not complete an operation."""


class TrainingError(TandemError):
    """A training run failed for a reason other than bad input."""
