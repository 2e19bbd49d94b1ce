"""Settings read from the environment, resolved once per call site.

``TANDEM_HOME`` (default ``~/.tandem``) holds the embedded registry database and the
artifact folder; ``TANDEM_REGISTRY`` overrides the database URL (e.g.
``postgresql+psycopg://user@host/db``) while artifacts stay under ``TANDEM_HOME``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from tandem.errors import ConfigError

__all__ = ["Settings", "layered_toml"]


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


def layered_toml(
    package: str,
    name: str,
    *,
    what: str,
    env: str,
    path: str | Path | None,
    settings: Settings | None,
    merge: Callable[[dict[str, Any], dict[str, Any], str], dict[str, Any]],
) -> tuple[dict[str, Any], list[str]]:
    """A TOML table shipped in ``package`` as ``name`` (the defaults), with a user's file laid
    over it by ``merge(defaults, theirs, where)``: ``path``, else the file ``env`` names, else
    ``$TANDEM_HOME/<name>`` when it exists. A file named but missing is an error; ``what``
    ("price table") names the table in every message. Returns the table and the files read,
    defaults first."""
    data = tomllib.loads(resources.files(package).joinpath(name).read_text())
    sources = [f"tandem defaults ({name})"]
    chosen = path or os.environ.get(env) or None
    if chosen is None:
        home = (settings or Settings.from_env()).home / name
        chosen = home if home.is_file() else None
    elif not Path(chosen).is_file():
        raise ConfigError(f"{what} {chosen} does not exist: give the path of a TOML file")
    if chosen is not None:
        try:
            theirs = tomllib.loads(Path(chosen).read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{what} {chosen} is not valid TOML: {exc}; fix that line") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {what} {chosen}: {exc}") from None
        data = merge(data, theirs, str(chosen))
        sources.append(str(chosen))
    return data, sources
