"""The model registry: numbered versions of named models, with aliases, tags and lineage.

Metadata lives in a SQL database (a SQLite file under ``TANDEM_HOME`` by default, PostgreSQL
when ``TANDEM_REGISTRY`` names it); each version's Bundle directory lives at
``artifacts/<name>/<version>``. A version exists once its row is committed, and its directory
is moved into place inside that same transaction, so a failure leaves neither behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tandem.config import Settings
from tandem.errors import ConfigError, NotFoundError, RegistryError, UsageError
from tandem.registry.refs import LATEST, ModelRef, parse_ref, validate_alias, validate_name

__all__ = [
    "SCHEMA_VERSION", "Decision", "ModelSummary", "ModelVersion", "Registry", "Run", "RunRecord", "VersionRecord",
]  # fmt: skip

#: version of the table layout, stored in the ``meta`` table for later migrations
SCHEMA_VERSION = 4

_ATTEMPTS = 5
_WRITE = "tandem_write"  # execution option: the transaction will write

_metadata = sa.MetaData()
_models = sa.Table(
    "models",
    _metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # highest number ever given, so a deleted version's number is never handed out again
    # (a parent_version must keep meaning the model it meant)
    sa.Column("last_version", sa.Integer, nullable=False),
)
_versions = sa.Table(
    "versions",
    _metadata,
    sa.Column("name", sa.String(64), sa.ForeignKey("models.name"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("path", sa.Text, nullable=False, unique=True),  # relative to the artifact folder
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("task", sa.Text, nullable=False),
    sa.Column("family", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),  # JSON object
    sa.Column("data_fingerprint", sa.Text, nullable=False),
    sa.Column("parent_version", sa.Integer),
    sa.Column("description", sa.Text, nullable=False),
)
_aliases = sa.Table(
    "aliases",
    _metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.ForeignKeyConstraint(["name", "version"], ["versions.name", "versions.version"]),
)
_tags = sa.Table(
    "tags",
    _metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.ForeignKeyConstraint(["name", "version"], ["versions.name", "versions.version"]),
)
#: work done with a version, for the cost ledger: one row per training run, batch job or
#: serving interval, never per request
_runs = sa.Table(
    "runs",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("phase", sa.String(32), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("wall_seconds", sa.Float, nullable=False),
    sa.Column("cpu_seconds", sa.Float, nullable=False),
    sa.Column("peak_rss_mb", sa.Float, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # JSON object
    sa.ForeignKeyConstraint(["name", "version"], ["versions.name", "versions.version"]),
    sa.Index("runs_by_version", "name", "version"),
)
#: every move of an alias that a retraining decided (or a person made by hand), with its
#: evidence; kept when versions are deleted, as the history of what served and why
_decisions = sa.Table(
    "decisions",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("champion_version", sa.Integer),
    sa.Column("challenger_version", sa.Integer, nullable=False),
    sa.Column("promoted", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),  # JSON object
    sa.Index("decisions_by_name", "name"),
)
_meta = sa.Table(
    "meta",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One finished piece of work with a version: ``phase`` says which ("train", "serve",
    "batch"); ``details`` is JSON (the ledger's per-epoch figures, energy, hardware...)."""

    phase: str
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    rows: int
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionRecord:
    """What the caller of :meth:`Registry.register` tells about the version it just wrote."""

    digest: str
    task: str
    family: str
    metrics: dict[str, float]
    data_fingerprint: str
    parent_version: int | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    #: work recorded with the version in the same transaction (its training run)
    runs: tuple[RunRecord, ...] = ()


@dataclass(frozen=True)
class ModelVersion:
    """One registered version; ``path`` is the absolute path of its Bundle directory."""

    name: str
    version: int
    created_at: datetime
    path: Path
    digest: str
    task: str
    family: str
    metrics: dict[str, float]
    data_fingerprint: str
    parent_version: int | None
    description: str
    aliases: tuple[str, ...]
    tags: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ModelSummary:
    """One line of :meth:`Registry.list_models`; ``updated_at`` is the newest version's time."""

    name: str
    latest_version: int
    n_versions: int
    aliases: dict[str, int]
    updated_at: datetime


@dataclass(frozen=True)
class Run:
    """One recorded job of a version (see :meth:`Registry.record_run`)."""

    id: int
    name: str
    version: int
    phase: str
    finished_at: datetime
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    rows: int
    details: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """Whether ``challenger_version`` took ``alias`` from ``champion_version``, and why.

    ``kind`` is ``retrain`` (decided by ``tandem retrain`` on measured evidence) or ``manual``
    (``tandem promote``: a rollback or an override); ``evidence`` is JSON (metrics of both on
    the same holdout, the interval of their difference, the drift report that triggered it).
    """

    id: int
    name: str
    decided_at: datetime
    kind: str
    alias: str
    champion_version: int | None
    challenger_version: int
    promoted: bool
    reason: str
    evidence: dict[str, Any]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _retry_races(
    method: Callable[Concatenate[Registry, _P], _R],
) -> Callable[Concatenate[Registry, _P], _R]:
    """Run a write again when a concurrent writer won a race for the same key.

    A server database (PostgreSQL) reports such a race as an IntegrityError, e.g. when two
    transactions insert the first version of a new name. SQLite writers queue on
    ``BEGIN IMMEDIATE`` and never race, so there an IntegrityError is a real error.
    """

    @functools.wraps(method)
    def wrapper(self: Registry, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        attempt = 1
        while True:
            try:
                return method(self, *args, **kwargs)
            except RegistryError as exc:
                lost_race = isinstance(exc.__cause__, IntegrityError) and not self._sqlite
                if not lost_race or attempt >= _ATTEMPTS:
                    raise
                attempt += 1

    return wrapper


class Registry:
    """Numbered versions of named models, their aliases and tags, and their Bundle folders.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> def write(folder: Path, version: int) -> VersionRecord:
        ...     (folder / "manifest.json").write_text("{}")
        ...     return VersionRecord(digest="0" * 64, task="classification", family="linear",
        ...                          metrics={"auc": 0.91}, data_fingerprint="d41d8cd9")
        >>> with Registry(Settings(home=Path(tmp.name))) as registry:
        ...     first = registry.register("fraud", write)
        ...     _ = registry.set_alias("fraud", first.version, "champion")
        ...     registry.get("fraud@champion").ref
        'fraud:1'
        >>> tmp.cleanup()
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._artifacts = self.settings.artifacts.absolute()
        try:
            url = sa.make_url(self.settings.registry_url)
            self._engine = sa.create_engine(url)
        except (SQLAlchemyError, ImportError) as exc:
            raise ConfigError(
                f"cannot open the registry database: {exc}; set TANDEM_REGISTRY to a SQLAlchemy "
                "URL such as postgresql+psycopg://user@host/db (pip install 'tandem-ml[postgres]')"
            ) from exc
        self._where = url.render_as_string(hide_password=True)
        self._sqlite = url.get_backend_name() == "sqlite"
        self._watch: sqlite3.Connection | None = None
        self._db_file = (
            Path(url.database)
            if self._sqlite and url.database not in (None, "", ":memory:")
            else None
        )
        if self._sqlite:
            if url.database not in (None, "", ":memory:"):
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            sa.event.listen(self._engine, "connect", _sqlite_connect)
            sa.event.listen(self._engine, "begin", _sqlite_begin)
        try:
            self._ensure_schema()
        except BaseException:
            self._engine.dispose()
            raise

    def change_token(self) -> int | None:
        """A number that changes after any write committed by another connection, read in
        microseconds (SQLite's ``PRAGMA data_version`` on a connection of its own). None where
        the database is not SQLite: then only a query can tell.

        A server following an alias compares tokens once a second and queries only on change.
        """
        if self._db_file is None:
            return None
        if self._watch is None:
            uri = f"{self._db_file.absolute().as_uri()}?mode=ro"
            self._watch = sqlite3.connect(uri, uri=True, check_same_thread=False)
        version: int = self._watch.execute("PRAGMA data_version").fetchone()[0]
        return version

    def close(self) -> None:
        """Close the pooled database connections."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @_retry_races
    def register(self, name: str, write: Callable[[Path, int], VersionRecord]) -> ModelVersion:
        """Store a new version of ``name``, numbered one past the highest it ever had (1 for a new name).

        ``write(folder, version)`` fills the empty ``folder`` with the Bundle and returns its
        :class:`VersionRecord`. It runs inside the write transaction, so concurrent writers
        wait for it; if it raises, nothing is registered and its folder is removed. On
        PostgreSQL it may run again, in a fresh folder, when a concurrent writer won a race.
        """
        validate_name(name)
        staging = self._artifacts / ".staging" / uuid.uuid4().hex
        placed: Path | None = None
        try:
            with self._tx(write=True) as conn:
                version = _next_version(conn, name)
                staging.mkdir(parents=True)
                record = write(staging, version)
                if not isinstance(record, VersionRecord):
                    raise UsageError(f"write() returned {record!r}; expected a VersionRecord")
                for key in record.tags:
                    validate_name(key, "tag key")
                row = asdict(record) | {
                    "name": name,
                    "version": version,
                    "path": f"{name}/{version}",
                    "created_at": datetime.now(UTC),
                    "metrics": json.dumps(record.metrics),
                }
                del row["tags"], row["runs"]
                placed = self._place(conn, staging, row["path"])
                conn.execute(insert(_versions).values(row))
                if record.tags:
                    keys = [{"key": k, "value": v} for k, v in record.tags.items()]
                    conn.execute(insert(_tags).values(name=name, version=version), keys)
                for run in record.runs:
                    _insert_run(conn, name, version, run)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if placed is not None:
                shutil.rmtree(placed, ignore_errors=True)
                _rmdir_if_empty(placed.parent)
            raise
        return self._model_version(row, (), record.tags)

    def get(self, ref: str | ModelRef) -> ModelVersion:
        """The version ``ref`` names: ``NAME`` or ``NAME@latest`` (the newest), ``NAME:V``,
        ``NAME@ALIAS``."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        with self._tx() as conn:
            version = ref.version
            if ref.alias is not None and ref.alias != LATEST:
                pointed = select(_aliases.c.version).where(_aliases.c.alias == ref.alias)
                version = conn.scalar(pointed.where(*_at(_aliases, ref.name)))
                if version is None:
                    raise self._no_alias(conn, ref.name, ref.alias)
            elif version is None:
                newest = select(func.max(_versions.c.version))
                version = conn.scalar(newest.where(*_at(_versions, ref.name)))
                if version is None:
                    raise self._missing(conn, ref.name)
            found = self._load(conn, ref.name, version)
            if not found:
                raise self._missing(conn, ref.name, version)
            return found[0]

    def list_models(self) -> list[ModelSummary]:
        """One summary per registered model, sorted by name."""
        with self._tx() as conn:
            aliases: dict[str, dict[str, int]] = defaultdict(dict)
            held = select(_aliases.c.name, _aliases.c.alias, _aliases.c.version)
            for name, alias, version in conn.execute(held.order_by("alias")):
                aliases[name][alias] = version
            stats = conn.execute(
                select(
                    _versions.c.name,
                    func.max(_versions.c.version),
                    func.count(),
                    func.max(_versions.c.created_at),
                ).group_by(_versions.c.name)
            ).all()
        summaries = [
            ModelSummary(name, latest, count, aliases[name], _utc(updated))
            for name, latest, count, updated in stats
        ]
        return sorted(summaries, key=lambda summary: summary.name)

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, newest first."""
        with self._tx() as conn:
            found = self._load(conn, name)
            if not found:
                raise self._missing(conn, name)
            return found

    @_retry_races
    def set_alias(self, name: str, version: int, alias: str) -> ModelVersion:
        """Point ``name@alias`` at ``version``, moving the alias if it points elsewhere."""
        validate_alias(alias)
        with self._tx(write=True) as conn:
            self._require_version(conn, name, version)
            conn.execute(delete(_aliases).where(*_at(_aliases, name), _aliases.c.alias == alias))
            conn.execute(insert(_aliases).values(name=name, alias=alias, version=version))
            return self._load(conn, name, version)[0]

    @_retry_races
    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``name@alias``; the version it pointed at stays."""
        with self._tx(write=True) as conn:
            doomed = delete(_aliases).where(*_at(_aliases, name), _aliases.c.alias == alias)
            if not conn.execute(doomed).rowcount:
                raise self._no_alias(conn, name, alias)

    @_retry_races
    def set_tag(self, name: str, version: int, key: str, value: str) -> None:
        """Set (or overwrite) tag ``key`` of a version."""
        validate_name(key, "tag key")
        with self._tx(write=True) as conn:
            self._require_version(conn, name, version)
            conn.execute(delete(_tags).where(*_at(_tags, name, version), _tags.c.key == key))
            conn.execute(insert(_tags).values(name=name, version=version, key=key, value=value))

    @_retry_races
    def delete_tag(self, name: str, version: int, key: str) -> None:
        """Remove tag ``key`` of a version."""
        with self._tx(write=True) as conn:
            self._require_version(conn, name, version)
            where = _at(_tags, name, version)
            if not conn.execute(delete(_tags).where(*where, _tags.c.key == key)).rowcount:
                keys = ", ".join(conn.scalars(select(_tags.c.key).where(*where).order_by("key")))
                raise NotFoundError(f"{name}:{version} has no tag {key!r}; tags: {keys or 'none'}")

    @_retry_races
    def delete_version(self, name: str, version: int, *, force: bool = False) -> None:
        """Remove a version with its aliases, tags and Bundle folder (all or nothing).

        A version that an alias points at is kept unless ``force`` is true; deleting the
        last version of a model removes the model.
        """
        trash = self._artifacts / ".trash" / uuid.uuid4().hex
        moved: Path | None = None
        try:
            with self._tx(write=True) as conn:
                row = self._require_version(conn, name, version)
                pointing = select(_aliases.c.alias).where(*_at(_aliases, name, version))
                held = list(conn.scalars(pointing.order_by("alias")))
                if held and not force:
                    raise UsageError(
                        f"{name}:{version} is the target of alias(es) {', '.join(held)}; move "
                        f"them first (`tandem promote {name}:VERSION --alias {held[0]}`) or "
                        f"delete anyway with force=True (`tandem models delete {name}:{version} "
                        "--force`), which removes them too"
                    )
                for table in (_aliases, _tags, _runs, _versions):
                    conn.execute(delete(table).where(*_at(table, name, version)))
                if not conn.scalar(select(func.count()).where(*_at(_versions, name))):
                    conn.execute(delete(_models).where(*_at(_models, name)))
                folder = self._artifacts / row.path
                if folder.exists():
                    # renamed now, removed after commit, so a rollback can put it back
                    _move(folder, trash)
                    moved = folder
                    _rmdir_if_empty(folder.parent)
        except BaseException:
            if moved is not None:
                _move(trash, moved)
            raise
        shutil.rmtree(trash, ignore_errors=True)

    @_retry_races
    def decide(
        self,
        name: str,
        *,
        kind: str,
        alias: str,
        challenger: int,
        promoted: bool,
        reason: str,
        evidence: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Record a decision about ``name@alias`` and, when ``promoted``, move the alias to
        ``challenger`` in the same transaction: the move and its record exist together or not
        at all. The champion is whatever the alias pointed at before."""
        validate_alias(alias)
        with self._tx(write=True) as conn:
            self._require_version(conn, name, challenger)
            champion = conn.scalar(
                select(_aliases.c.version).where(*_at(_aliases, name), _aliases.c.alias == alias)
            )
            if promoted:
                conn.execute(
                    delete(_aliases).where(*_at(_aliases, name), _aliases.c.alias == alias)
                )
                conn.execute(insert(_aliases).values(name=name, alias=alias, version=challenger))
            row = {
                "name": name, "decided_at": datetime.now(UTC), "kind": kind, "alias": alias,
                "champion_version": champion, "challenger_version": challenger,
                "promoted": promoted, "reason": reason,
                "evidence": json.dumps(dict(evidence or {}), default=str),
            }  # fmt: skip
            inserted = conn.execute(insert(_decisions).values(row)).inserted_primary_key
            assert inserted is not None
            return Decision(id=int(inserted[0]), **row | {"evidence": dict(evidence or {})})

    def decisions(self, name: str, version: int | None = None) -> list[Decision]:
        """The decisions about ``name`` (those where ``version`` was champion or challenger),
        oldest first."""
        query = select(_decisions).where(_decisions.c.name == name)
        if version is not None:
            query = query.where(
                sa.or_(
                    _decisions.c.champion_version == version,
                    _decisions.c.challenger_version == version,
                )
            )
        with self._tx() as conn:
            rows = conn.execute(query.order_by(_decisions.c.id)).mappings().all()
        return [Decision(**_decoded(r, "decided_at", "evidence")) for r in rows]

    def record_run(self, name: str, version: int, record: RunRecord) -> Run:
        """Record one finished piece of work of ``name:version``."""
        (run,) = self.record_runs([(name, version, record)])
        return run

    def record_runs(self, records: Sequence[tuple[str, int, RunRecord]]) -> list[Run]:
        """Record several pieces of work (name, version, record) in one transaction: all or none."""
        with self._tx(write=True) as conn:
            for name, version, _ in records:
                self._require_version(conn, name, version)
            return [_insert_run(conn, name, version, record) for name, version, record in records]

    def runs(self, name: str, version: int | None = None, *, phase: str | None = None) -> list[Run]:
        """The recorded jobs of ``name`` (of one ``version``, of one ``phase``), oldest first."""
        query = select(_runs).where(*_at(_runs, name, version))
        if phase is not None:
            query = query.where(_runs.c.phase == phase)
        with self._tx() as conn:
            rows = conn.execute(query.order_by(_runs.c.id)).mappings().all()
        return [Run(**_decoded(r, "finished_at", "details")) for r in rows]

    @contextlib.contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction; database errors come out as RegistryError."""
        try:
            with self._engine.connect() as conn:
                conn.execution_options(**{_WRITE: write})
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise RegistryError(f"registry database {self._where} failed: {exc}") from exc

    @_retry_races
    def _ensure_schema(self) -> None:
        with self._tx() as conn:
            found = _schema_version(conn)
        if found is None:
            with self._tx(write=True) as conn:
                _lock_schema(conn)
                _metadata.create_all(conn)
                found = _schema_version(conn)
                if found is None:
                    found = SCHEMA_VERSION
                    conn.execute(insert(_meta).values(key="schema_version", value=str(found)))
        for old, migrate in ((1, _migrate_1_to_2), (2, _migrate_2_to_3), (3, _migrate_3_to_4)):
            if found == old:
                with self._tx(write=True) as conn:
                    _lock_schema(conn)
                    migrate(conn)
                found = old + 1
        if found > SCHEMA_VERSION:
            raise RegistryError(
                f"registry database {self._where} has schema version {found}, newer than this "
                f"tandem understands ({SCHEMA_VERSION}); upgrade tandem"
            )

    def _place(self, conn: Connection, staging: Path, path: str) -> Path:
        """Move the written staging folder to ``artifacts/path``; return where it went."""
        target = self._artifacts / path
        if target.exists():
            # a leftover of a crash between the move and the commit, unless a row claims it
            if conn.scalar(select(_versions.c.name).where(_versions.c.path == path)) is not None:
                raise RegistryError(f"{target} already belongs to a registered version")
            shutil.rmtree(target)
        _move(staging, target)
        return target

    def _load(self, conn: Connection, name: str, version: int | None = None) -> list[ModelVersion]:
        """The versions of ``name`` (only ``version`` if given), newest first."""
        aliases: dict[int, list[str]] = defaultdict(list)
        held = select(_aliases.c.version, _aliases.c.alias).where(*_at(_aliases, name, version))
        for number, alias in conn.execute(held.order_by("alias")):
            aliases[number].append(alias)
        tags: dict[int, dict[str, str]] = defaultdict(dict)
        tagged = select(_tags.c.version, _tags.c.key, _tags.c.value)
        for number, key, value in conn.execute(tagged.where(*_at(_tags, name, version))):
            tags[number][key] = value
        rows = select(_versions).where(*_at(_versions, name, version))
        return [
            self._model_version(row._mapping, aliases[row.version], tags[row.version])
            for row in conn.execute(rows.order_by(_versions.c.version.desc()))
        ]

    def _model_version(
        self, row: Mapping[Any, Any], aliases: Sequence[str], tags: Mapping[str, str]
    ) -> ModelVersion:
        copied = ("name", "version", "digest", "task", "family", "data_fingerprint", "description")
        return ModelVersion(
            **{column: row[column] for column in copied},
            parent_version=row["parent_version"],
            created_at=_utc(row["created_at"]),
            path=self._artifacts / row["path"],
            metrics=json.loads(row["metrics"]),
            aliases=tuple(aliases),
            tags=dict(sorted(tags.items())),
        )

    def _require_version(self, conn: Connection, name: str, version: int) -> Row[Any]:
        row = conn.execute(select(_versions).where(*_at(_versions, name, version))).first()
        if row is None:
            raise self._missing(conn, name, version)
        return row

    def _missing(self, conn: Connection, name: str, version: int | None = None) -> NotFoundError:
        """The error for a model, or a version of it, that does not exist, listing what does."""
        numbers = list(conn.scalars(select(_versions.c.version).where(*_at(_versions, name))))
        if not numbers:
            names = sorted(conn.scalars(select(_models.c.name)))
            return NotFoundError(
                f"no model named {name!r}; registered models: {', '.join(names) or 'none yet'}"
            )
        listed = ", ".join(map(str, sorted(numbers)))
        return NotFoundError(f"model {name!r} has no version {version}; versions: {listed}")

    def _no_alias(self, conn: Connection, name: str, alias: str) -> NotFoundError:
        if conn.scalar(select(_models.c.name).where(*_at(_models, name))) is None:
            return self._missing(conn, name)
        held = conn.scalars(select(_aliases.c.alias).where(*_at(_aliases, name)).order_by("alias"))
        return NotFoundError(
            f"model {name!r} has no alias {alias!r}; aliases: {', '.join(held) or 'none'}; "
            f"set one with `tandem promote {name}:VERSION --alias {alias}`"
        )


def _at(table: sa.Table, name: str, version: int | None = None) -> list[sa.ColumnElement[bool]]:
    """WHERE terms selecting the rows of model ``name`` (and ``version``) in ``table``."""
    terms = [table.c.name == name]
    return terms if version is None else [*terms, table.c.version == version]


def _decoded(row: Any, when: str, payload: str) -> dict[str, Any]:
    """A stored row's fields, its time in UTC and its JSON column parsed."""
    return dict(row) | {when: _utc(row[when]), payload: json.loads(row[payload])}


def _insert_run(conn: Connection, name: str, version: int, record: RunRecord) -> Run:
    run = Run(id=0, name=name, version=version, finished_at=datetime.now(UTC),
              **asdict(record) | {"details": dict(record.details)})  # fmt: skip
    row = asdict(run) | {"details": json.dumps(run.details, default=str)}
    del row["id"]
    inserted = conn.execute(insert(_runs).values(row)).inserted_primary_key
    assert inserted is not None
    return dataclasses.replace(run, id=int(inserted[0]))


def _next_version(conn: Connection, name: str) -> int:
    """Lock ``name`` (creating it if new) and return the number its next version gets."""
    # FOR UPDATE queues concurrent writers of one name on PostgreSQL (SQLite omits it: there
    # BEGIN IMMEDIATE already serializes all writers); two inserts of a new name collide and
    # the loser is retried by _retry_races
    locked = select(_models.c.last_version).where(*_at(_models, name)).with_for_update()
    last = conn.scalar(locked)
    if last is None:
        conn.execute(
            insert(_models).values(name=name, created_at=datetime.now(UTC), last_version=0)
        )
        last = 0
    conn.execute(sa.update(_models).where(*_at(_models, name)).values(last_version=last + 1))
    return int(last) + 1


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 2 added ``models.last_version``: the highest number ever given, taken from the
    versions still registered (a number deleted before the upgrade cannot be known)."""
    if _schema_version(conn) != 1:  # another process migrated meanwhile
        return
    columns = {c["name"] for c in sa.inspect(conn).get_columns("models")}
    if "last_version" not in columns:
        conn.execute(
            sa.text("ALTER TABLE models ADD COLUMN last_version INTEGER NOT NULL DEFAULT 0")
        )
        newest = (
            select(func.coalesce(func.max(_versions.c.version), 0))
            .where(_versions.c.name == _models.c.name)
            .scalar_subquery()
        )
        conn.execute(sa.update(_models).values(last_version=newest))
    _set_schema_version(conn, 2)


def _migrate_2_to_3(conn: Connection) -> None:
    """Version 3 added the ``runs`` table."""
    if _schema_version(conn) != 2:
        return
    _runs.create(conn, checkfirst=True)
    _set_schema_version(conn, 3)


def _migrate_3_to_4(conn: Connection) -> None:
    """Version 4 added the ``decisions`` table."""
    if _schema_version(conn) != 3:
        return
    _decisions.create(conn, checkfirst=True)
    _set_schema_version(conn, 4)


def _lock_schema(conn: Connection) -> None:
    """Make concurrent processes create or migrate the tables one at a time.

    SQLite's ``BEGIN IMMEDIATE`` already does. On PostgreSQL, ``CREATE TABLE`` checks for the
    table before it takes any lock, so two processes that open an empty database at once both
    try to create it and one fails with DuplicateTable; a transaction-scoped advisory lock makes
    the second wait for the first's commit, after which its checks see the tables.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})


#: the PostgreSQL advisory lock key that serializes schema changes ("tandem" in ASCII)
_SCHEMA_LOCK = 0x74616E64656D


def _set_schema_version(conn: Connection, version: int) -> None:
    conn.execute(sa.update(_meta).where(_meta.c.key == "schema_version").values(value=str(version)))


def _schema_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table("meta"):
        return None
    value = conn.scalar(select(_meta.c.value).where(_meta.c.key == "schema_version"))
    return None if value is None else int(value)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # take BEGIN away from the sqlite3 driver so that _sqlite_begin chooses its kind
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "foreign_keys = ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so writers queue on busy_timeout instead of
    # failing with "database is locked" when a read lock cannot be upgraded
    write = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _move(source: Path, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    except OSError as exc:
        raise RegistryError(f"cannot move {source} to {target}: {exc}") from exc


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _utc(moment: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; they were written in UTC
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
