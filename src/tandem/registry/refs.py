"""Model references (``fraud``, ``fraud:3``, ``fraud@champion``) and the naming rule.

Names of models, aliases and tag keys become directory names and URL segments, so they
are restricted to a small safe alphabet: no path separators, no ``..``, at most 64
characters. Aliases may not be all digits, so ``NAME@3`` can never be mistaken for
``NAME:3``, and the alias ``latest`` is reserved for "the newest version".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tandem.errors import UsageError

__all__ = ["LATEST", "ModelRef", "parse_ref", "validate_alias", "validate_name"]

#: the reserved alias that always means the newest version
LATEST = "latest"

#: versions are stored as 32-bit integers (PostgreSQL ``INTEGER``)
_MAX_VERSION = 2**31 - 1

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RULE = (
    "use 1 to 64 characters from letters, digits, '.', '_' and '-', "
    "starting with a letter or digit and without '..'"
)
_FORMS = "accepted forms: NAME, NAME:VERSION (a positive integer) or NAME@ALIAS"


def validate_name(value: str, what: str = "model name") -> str:
    """Return ``value`` if it is a valid name, else raise :class:`UsageError`.

    Example:
        >>> validate_name("fraud-v2.1")
        'fraud-v2.1'
    """
    if not _NAME.fullmatch(value) or ".." in value:
        raise UsageError(f"invalid {what} {value!r}: {_RULE}")
    return value


def validate_alias(value: str) -> str:
    """Return ``value`` if it can be set as an alias (a valid name, not digits, not ``latest``)."""
    validate_name(value, "alias")
    if value.isdigit():
        raise UsageError(
            f"invalid alias {value!r}: an alias must not be all digits "
            f"(to point at a version, use NAME:{value})"
        )
    if value == LATEST:
        raise UsageError(f"the alias {LATEST!r} is reserved: it always means the newest version")
    return value


@dataclass(frozen=True)
class ModelRef:
    """A model name with at most one of a version number or an alias; neither means newest.

    Example:
        >>> str(ModelRef("fraud", version=3)), str(ModelRef("fraud", alias="champion"))
        ('fraud:3', 'fraud@champion')
    """

    name: str
    version: int | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.version is not None and self.alias is not None:
            raise UsageError(
                f"give a version or an alias, not both (got {self.version} and {self.alias!r})"
            )
        if self.version is not None and not 1 <= self.version <= _MAX_VERSION:
            raise UsageError(f"version {self.version} is out of range: use 1 to {_MAX_VERSION}")
        if self.alias is not None and self.alias != LATEST:
            validate_alias(self.alias)

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(text: str) -> ModelRef:
    """Parse ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` into a :class:`ModelRef`.

    Example:
        >>> parse_ref("fraud:3")
        ModelRef(name='fraud', version=3, alias=None)
    """
    cut = min((i for i in (text.find(":"), text.find("@")) if i >= 0), default=len(text))
    name, sep, rest = text[:cut], text[cut : cut + 1], text[cut + 1 :]
    try:
        if sep == ":":
            if not re.fullmatch(r"[0-9]{1,10}", rest):
                raise UsageError(f"version {rest!r} is not a whole number from 1 to {_MAX_VERSION}")
            return ModelRef(name, version=int(rest))
        return ModelRef(name, alias=rest if sep else None)
    except UsageError as exc:
        raise UsageError(f"invalid model reference {text!r}: {exc}; {_FORMS}") from None
