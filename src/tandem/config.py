"""Settings read from the environment, resolved once per call site.

``TANDEM_HOME`` (default ``~/.tandem``) holds the embedded registry database and the
artifact folder; ``TANDEM_REGISTRY`` overrides the database URL (e.g.
``postgresql+psycopg://user@host/db``) while artifacts stay under ``TANDEM_HOME``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

__all__ = ["Settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where tandem keeps its state.

    Example:
        >>> s = Settings(home=Path("/tmp/th"))
        >>> s.registry_url
        'sqlite:////tmp/th/registry.db'
    """

    home: Path
    registry: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("TANDEM_HOME") or Path.home() / ".tandem").expanduser()
        return cls(home=home, registry=os.environ.get("TANDEM_REGISTRY") or None)

    @property
    def registry_url(self) -> str:
        if self.registry:
            return self.registry
        # built, not formatted: a '?', '#' or '%' in the path must not become URL syntax
        return URL.create("sqlite", database=str(self.home / "registry.db")).render_as_string()

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"
