from __future__ import annotations

import doctest
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

import tandem.registry
from tandem.config import Settings
from tandem.errors import NotFoundError, RegistryError, UsageError
from tandem.registry import ModelRef, Registry, RunRecord, VersionRecord
from tandem.registry import store as store_module
from tandem.registry.store import SCHEMA_VERSION

WORKER = Path(__file__).with_name("_register_worker.py")
SRC = Path(tandem.registry.__file__).parents[2]
#: a PostgreSQL server URL (e.g. postgresql+psycopg://postgres@/postgres?host=/tmp) to run
#: the backend-neutral tests on PostgreSQL as well; each test gets a fresh database there
POSTGRES = os.environ.get("TANDEM_TEST_POSTGRES")

Write = Callable[[Path, int], VersionRecord]


def writer(**record: Any) -> Write:
    """A write callback that puts a manifest naming the version into the folder."""

    def write(folder: Path, version: int) -> VersionRecord:
        (folder / "manifest.json").write_text(json.dumps({"version": version}))
        fields = {
            "digest": f"sha-{version}",
            "task": "classification",
            "family": "linear",
            "metrics": {"auc": 0.9},
            "data_fingerprint": "fp1",
        }
        return VersionRecord(**(fields | record))

    return write


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(params=["sqlite", "postgresql"] if POSTGRES else ["sqlite"])
def settings(request: pytest.FixtureRequest, home: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield Settings(home=home)
        return
    assert POSTGRES is not None
    server = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    database = f"tandem_test_{uuid.uuid4().hex[:12]}"
    with server.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {database}")
    url = sa.make_url(POSTGRES).set(database=database)
    yield Settings(home=home, registry=url.render_as_string(hide_password=False))
    with server.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {database} WITH (FORCE)")
    server.dispose()


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with Registry(settings) as registry:
        yield registry


def leftovers(artifacts: Path) -> list[str]:
    return sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*"))


def test_public_names() -> None:
    assert set(tandem.registry.__all__) == {
        "Decision",
        "ModelRef",
        "ModelSummary",
        "ModelVersion",
        "Registry",
        "Run",
        "RunRecord",
        "VersionRecord",
        "parse_ref",
        "validate_name",
    }


def test_docstring_examples_run() -> None:
    result = doctest.testmod(store_module)
    assert result.attempted > 0 and result.failed == 0


def test_register_numbers_versions_and_places_bundles(registry: Registry, home: Path) -> None:
    first = registry.register("fraud", writer(tags={"team": "risk"}, description="baseline"))
    second = registry.register("fraud", writer(parent_version=1, metrics={"auc": 0.93}))
    assert (first.version, second.version) == (1, 2)
    assert second.path == (home / "artifacts" / "fraud" / "2").absolute()
    assert json.loads((second.path / "manifest.json").read_text()) == {"version": 2}
    assert first.created_at.tzinfo == UTC
    assert first.tags == {"team": "risk"}
    assert (first.description, second.parent_version, second.ref) == ("baseline", 1, "fraud:2")
    assert registry.get("fraud:1") == first
    assert registry.get("fraud") == second
    assert registry.get("fraud").metrics == {"auc": 0.93}
    assert registry.register("churn", writer()).version == 1


def test_get_by_every_kind_of_reference(registry: Registry) -> None:
    for _ in range(3):
        registry.register("fraud", writer())
    registry.set_alias("fraud", 2, "champion")
    assert registry.get("fraud").version == 3
    assert registry.get("fraud@latest").version == 3
    assert registry.get("fraud:1").version == 1
    assert registry.get("fraud@champion").version == 2
    assert registry.get(ModelRef("fraud", alias="champion")).aliases == ("champion",)
    with pytest.raises(UsageError, match="accepted forms"):
        registry.get("fraud:x")


def test_not_found_messages_list_what_exists(registry: Registry) -> None:
    for _ in range(3):
        registry.register("fraud", writer())
    registry.register("churn", writer())
    registry.set_alias("fraud", 1, "staging")
    with pytest.raises(NotFoundError, match=r"model 'fraud' has no version 9; versions: 1, 2, 3"):
        registry.get("fraud:9")
    with pytest.raises(NotFoundError, match=r"no model named 'frad'; registered models: churn, fr"):
        registry.get("frad")
    with pytest.raises(NotFoundError) as caught:
        registry.get("fraud@champion")
    assert "model 'fraud' has no alias 'champion'; aliases: staging" in str(caught.value)
    assert "tandem promote fraud:VERSION --alias champion" in str(caught.value)
    with pytest.raises(NotFoundError, match="no model named 'frad'"):
        registry.get("frad@champion")
    with pytest.raises(NotFoundError, match="no model named 'frad'"):
        registry.list_versions("frad")
    with pytest.raises(NotFoundError, match="versions: 1, 2, 3"):
        registry.set_tag("fraud", 7, "k", "v")


def test_empty_registry_says_so(registry: Registry) -> None:
    assert registry.list_models() == []
    with pytest.raises(NotFoundError, match="registered models: none yet"):
        registry.get("fraud")


def test_list_models_and_versions(registry: Registry) -> None:
    for name in ["fraud", "churn", "fraud", "fraud"]:
        registry.register(name, writer())
    registry.set_alias("fraud", 3, "champion")
    registry.set_alias("fraud", 2, "challenger")
    churn, fraud = registry.list_models()
    assert (churn.name, churn.latest_version, churn.n_versions, churn.aliases) == (
        "churn",
        1,
        1,
        {},
    )
    assert (fraud.name, fraud.latest_version, fraud.n_versions) == ("fraud", 3, 3)
    assert fraud.aliases == {"champion": 3, "challenger": 2}
    assert fraud.updated_at == registry.get("fraud:3").created_at
    assert fraud.updated_at.tzinfo == UTC
    assert [v.version for v in registry.list_versions("fraud")] == [3, 2, 1]
    assert [v.aliases for v in registry.list_versions("fraud")] == [
        ("champion",),
        ("challenger",),
        (),
    ]


def test_tags(registry: Registry) -> None:
    registry.register("fraud", writer(tags={"team": "risk", "stage": "dev"}))
    registry.set_tag("fraud", 1, "stage", "prod")
    registry.set_tag("fraud", 1, "owner", "ana")
    assert registry.get("fraud:1").tags == {"owner": "ana", "stage": "prod", "team": "risk"}
    registry.delete_tag("fraud", 1, "team")
    assert registry.get("fraud:1").tags == {"owner": "ana", "stage": "prod"}
    with pytest.raises(NotFoundError, match="fraud:1 has no tag 'team'; tags: owner, stage"):
        registry.delete_tag("fraud", 1, "team")
    with pytest.raises(UsageError, match="invalid tag key"):
        registry.set_tag("fraud", 1, "a/b", "x")


def test_aliases_move_and_are_validated(registry: Registry) -> None:
    registry.register("fraud", writer())
    registry.register("fraud", writer())
    assert registry.set_alias("fraud", 1, "champion").aliases == ("champion",)
    moved = registry.set_alias("fraud", 2, "champion")
    assert (moved.version, moved.aliases) == (2, ("champion",))
    assert registry.get("fraud:1").aliases == ()
    assert registry.get("fraud@champion").version == 2
    registry.delete_alias("fraud", "champion")
    with pytest.raises(NotFoundError, match="aliases: none"):
        registry.get("fraud@champion")
    with pytest.raises(NotFoundError, match="no alias 'champion'"):
        registry.delete_alias("fraud", "champion")
    with pytest.raises(NotFoundError, match="has no version 5"):
        registry.set_alias("fraud", 5, "champion")
    for bad in ["latest", "3", "a/b"]:
        with pytest.raises(UsageError):
            registry.set_alias("fraud", 1, bad)


def test_delete_version_removes_row_folder_and_tags(registry: Registry, home: Path) -> None:
    for _ in range(3):
        registry.register("fraud", writer(tags={"k": "v"}))
    doomed = registry.get("fraud:2")
    registry.delete_version("fraud", 2)
    assert not doomed.path.exists()
    assert [v.version for v in registry.list_versions("fraud")] == [3, 1]
    with pytest.raises(NotFoundError, match="versions: 1, 3"):
        registry.get("fraud:2")
    with pytest.raises(NotFoundError, match="has no version 2"):
        registry.delete_version("fraud", 2)
    assert leftovers(home / "artifacts" / ".trash") == []


def test_delete_version_protects_alias_targets(registry: Registry) -> None:
    registry.register("fraud", writer())
    registry.register("fraud", writer())
    registry.set_alias("fraud", 1, "champion")
    registry.set_alias("fraud", 1, "stable")
    with pytest.raises(UsageError) as caught:
        registry.delete_version("fraud", 1)
    message = str(caught.value)
    assert "champion, stable" in message and "tandem promote fraud:VERSION" in message
    assert "force=True" in message
    assert registry.get("fraud:1").path.exists()
    registry.delete_version("fraud", 1, force=True)
    assert [v.version for v in registry.list_versions("fraud")] == [2]
    assert registry.list_models()[0].aliases == {}


def test_deleting_the_last_version_removes_the_model(registry: Registry, home: Path) -> None:
    registry.register("fraud", writer())
    registry.register("churn", writer())
    registry.delete_version("fraud", 1)
    assert [m.name for m in registry.list_models()] == ["churn"]
    assert leftovers(home / "artifacts") == [
        ".staging",
        ".trash",
        "churn",
        "churn/1",
        "churn/1/manifest.json",
    ]
    # numbering starts again at 1, like any new name
    assert registry.register("fraud", writer()).version == 1


def test_failed_write_leaves_nothing(registry: Registry, home: Path) -> None:
    def explode(folder: Path, version: int) -> VersionRecord:
        (folder / "weights.onnx").write_bytes(b"partial")
        raise ValueError("out of disk")

    with pytest.raises(ValueError, match="out of disk"):
        registry.register("fraud", explode)
    assert registry.list_models() == []
    assert leftovers(home / "artifacts") == [".staging"]
    assert registry.register("fraud", writer()).version == 1
    with pytest.raises(ValueError, match="out of disk"):
        registry.register("fraud", explode)
    assert [v.version for v in registry.list_versions("fraud")] == [1]
    assert registry.register("fraud", writer()).version == 2


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ({"tags": {"a/b": "x"}}, UsageError),  # rejected before the folder moves
        ({"digest": None}, RegistryError),  # rejected by the database after the move
    ],
)
def test_rejected_record_leaves_nothing(
    registry: Registry, home: Path, record: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        registry.register("fraud", writer(**record))
    assert registry.list_models() == []
    assert leftovers(home / "artifacts") == [".staging"]


def test_write_must_return_a_version_record(registry: Registry) -> None:
    with pytest.raises(UsageError, match="expected a VersionRecord"):
        registry.register("fraud", lambda folder, version: None)  # type: ignore[arg-type,return-value]


def test_invalid_name_is_refused_before_anything_happens(registry: Registry, home: Path) -> None:
    with pytest.raises(UsageError, match="invalid model name '../evil'"):
        registry.register("../evil", writer())
    assert not (home / "artifacts").exists()


def test_stale_folder_from_a_crash_is_replaced(registry: Registry, home: Path) -> None:
    stale = home / "artifacts" / "fraud" / "1"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("left by a crash")
    version = registry.register("fraud", writer())
    assert sorted(p.name for p in version.path.iterdir()) == ["manifest.json"]


def test_folder_claimed_by_a_row_is_never_removed(registry: Registry, settings: Settings) -> None:
    registry.register("fraud", writer())
    engine = sa.create_engine(settings.registry_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE versions SET path = 'churn/1'")
    engine.dispose()
    claimed = settings.artifacts / "churn" / "1"
    claimed.mkdir(parents=True)
    with pytest.raises(RegistryError, match="already belongs to a registered version"):
        registry.register("churn", writer())
    assert claimed.is_dir()
    assert [m.name for m in registry.list_models()] == ["fraud"]
    assert leftovers(settings.artifacts / ".staging") == []


def test_failed_delete_keeps_the_version(registry: Registry, settings: Settings) -> None:
    version = registry.register("fraud", writer())
    (settings.artifacts / ".trash").write_text("a file where the trash folder should be")
    with pytest.raises(RegistryError, match="cannot move"):
        registry.delete_version("fraud", 1)
    assert registry.get("fraud:1") == version
    assert (version.path / "manifest.json").is_file()


def test_sqlite_database_uses_write_ahead_logging(home: Path) -> None:
    with Registry(Settings(home=home)) as registry:
        registry.register("fraud", writer())
    db = sqlite3.connect(home / "registry.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


def test_newer_schema_is_refused(settings: Settings) -> None:
    Registry(settings).close()
    engine = sa.create_engine(settings.registry_url)
    with engine.begin() as conn:
        stored = conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'")
        assert stored.scalar() == str(SCHEMA_VERSION)
        conn.exec_driver_sql("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    engine.dispose()
    with pytest.raises(RegistryError, match="schema version 99, newer than"):
        Registry(settings)


def test_foreign_keys_are_enforced(registry: Registry) -> None:
    registry.register("fraud", writer())
    with pytest.raises(RegistryError, match="(?i)foreign key"), registry._tx(write=True) as conn:
        conn.exec_driver_sql("INSERT INTO aliases (name, alias, version) VALUES ('fraud', 'x', 42)")


def test_reopening_keeps_everything(settings: Settings) -> None:
    with Registry(settings) as registry:
        registry.register("fraud", writer())
    with Registry(settings) as registry:
        assert registry.get("fraud").version == 1


@pytest.mark.slow
def test_concurrent_processes_get_distinct_versions(settings: Settings) -> None:
    # the database is still empty: the workers also race to create the tables
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, str(WORKER), str(settings.home), "fraud", "5"]
    command += [settings.registry] if settings.registry else []
    workers = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    printed: list[int] = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        printed += [int(line) for line in out.split()]
    assert sorted(printed) == list(range(1, 21))

    with Registry(settings) as registry:
        versions = registry.list_versions("fraud")
    assert [v.version for v in versions] == list(range(20, 0, -1))
    owners: Counter[int] = Counter()
    for version in versions:
        pid, number = (version.path / "owner.txt").read_text().split()
        assert int(number) == version.version
        assert version.digest == f"{pid}-{number}"
        owners[int(pid)] += 1
    assert owners == {worker.pid: 5 for worker in workers}
    assert leftovers(settings.artifacts / ".staging") == []


@hypothesis.settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("register"), st.just(0), st.just("")),
            st.tuples(st.just("delete"), st.integers(1, 6), st.sampled_from(["", "force"])),
            st.tuples(st.just("alias"), st.integers(1, 6), st.sampled_from(["a", "b"])),
        ),
        max_size=12,
    )
)
def test_registry_matches_a_simple_model(operations: list[tuple[str, int, str]]) -> None:
    """After any sequence of operations, rows, aliases and folders agree with a plain dict."""
    live: set[int] = set()
    aliases: dict[str, int] = {}
    last = 0  # numbers are never reused while the model exists
    with tempfile.TemporaryDirectory() as tmp, Registry(Settings(home=Path(tmp))) as registry:
        for action, number, extra in operations:
            if action == "register":
                last += 1
                assert registry.register("m", writer()).version == last
                live.add(last)
            elif number not in live:
                with pytest.raises(NotFoundError, match="no version|no model"):
                    if action == "alias":
                        registry.set_alias("m", number, extra)
                    else:
                        registry.delete_version("m", number)
            elif action == "alias":
                registry.set_alias("m", number, extra)
                aliases[extra] = number
            elif number in aliases.values() and not extra:
                with pytest.raises(UsageError):
                    registry.delete_version("m", number)
            else:
                registry.delete_version("m", number, force=bool(extra))
                live.discard(number)
                aliases = {a: v for a, v in aliases.items() if v != number}
                if not live:
                    last = 0  # deleting every version deletes the model, and its counter
        folders = Path(tmp, "artifacts", "m")
        on_disk = {int(p.name) for p in folders.iterdir()} if folders.exists() else set()
        assert on_disk == live
        summaries = registry.list_models()
        if live:
            assert [(s.name, s.n_versions, s.aliases) for s in summaries] == [
                ("m", len(live), aliases)
            ]
        else:
            assert summaries == []


def test_a_deleted_version_number_is_never_given_again(registry: Registry) -> None:
    for _ in range(3):
        registry.register("m", writer())
    registry.delete_version("m", 3)
    assert registry.register("m", writer()).version == 4
    assert [v.version for v in registry.list_versions("m")] == [4, 2, 1]


@pytest.mark.parametrize("odd", ["a?b", "c%20d", "e#f"])
def test_url_characters_in_tandem_home_stay_part_of_the_path(tmp_path: Path, odd: str) -> None:
    home = tmp_path / odd
    with Registry(Settings(home=home)) as registry:
        registry.register("m", writer())
    assert (home / "registry.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [odd]


def test_the_change_token_moves_with_every_write_and_only_then(registry: Registry) -> None:
    registry.register("m", writer())
    registry.register("m", writer())
    token = registry.change_token()
    if registry.settings.registry is not None:  # PostgreSQL: no file to watch, always query
        assert token is None
        return
    registry.get("m@latest")
    registry.list_models()
    assert registry.change_token() == token  # reads change nothing
    registry.set_alias("m", 1, "champion")
    moved = registry.change_token()
    assert moved != token
    registry.set_alias("m", 2, "champion")
    assert registry.change_token() != moved


def test_a_schema_1_registry_is_migrated_and_keeps_numbering(home: Path) -> None:
    import sqlite3

    settings = Settings(home=home)
    with Registry(settings) as reg:
        reg.register("m", writer())
        reg.register("m", writer())
    # the layout tandem wrote before models.last_version and the runs table existed
    db = sqlite3.connect(home / "registry.db")
    db.execute("ALTER TABLE models DROP COLUMN last_version")
    db.execute("DROP TABLE runs")
    db.execute("DROP TABLE decisions")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with Registry(settings) as reg:
        assert reg.register("m", writer()).version == 3
        assert sorted(v.version for v in reg.list_versions("m")) == [1, 2, 3]
        # and the table of schema 3 is there to record jobs in
        reg.record_run("m", 3, RunRecord(phase="batch", wall_seconds=1.0, cpu_seconds=0.5,
                                         peak_rss_mb=100.0, rows=10))  # fmt: skip
        assert [r.rows for r in reg.runs("m")] == [10]
        # and the table of schema 4 to record decisions in
        assert reg.decide("m", kind="manual", alias="a", challenger=3, promoted=True, reason="r").id
    db = sqlite3.connect(home / "registry.db")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    db.close()


def run(phase: str, rows: int, **details: Any) -> RunRecord:
    return RunRecord(phase=phase, wall_seconds=2.0, cpu_seconds=3.0, peak_rss_mb=200.0, rows=rows,
                     details=details.get("details", {}))  # fmt: skip


def test_runs_are_recorded_against_their_version_and_go_with_it(home: Path) -> None:
    with Registry(Settings(home=home)) as reg:
        reg.register("m", writer())
        # the training run goes in with its version, in one transaction
        reg.register("m", writer(runs=(run("train", 77, details={"epochs": [1, 2]}),)))
        (trained,) = reg.runs("m", phase="train")
        assert (trained.version, trained.rows, trained.details) == (2, 77, {"epochs": [1, 2]})
        first = reg.record_run("m", 1, run("batch", 1000, details={"output": "a.parquet"}))
        reg.record_run("m", 2, run("batch", 5))
        assert [(r.version, r.rows) for r in reg.runs("m")] == [(2, 77), (1, 1000), (2, 5)]
        (again,) = reg.runs("m", 1, phase="batch")
        assert again == first and again.details == {"output": "a.parquet"}
        assert reg.runs("m", phase="serve") == []
        with pytest.raises(NotFoundError):
            reg.record_run("m", 7, run("batch", 1))
        reg.delete_version("m", 1)
        assert [r.version for r in reg.runs("m")] == [2, 2]


def test_a_decision_and_its_alias_move_together(home: Path) -> None:
    with Registry(Settings(home=home)) as reg:
        for _ in range(3):
            reg.register("m", writer())
        first = reg.decide("m", kind="retrain", alias="champion", challenger=1, promoted=True,
                           reason="first", evidence={"interval": [0.01, 0.05]})  # fmt: skip
        assert first.champion_version is None and reg.get("m@champion").version == 1
        kept = reg.decide("m", kind="retrain", alias="champion", challenger=2, promoted=False,
                          reason="not better")  # fmt: skip
        assert kept.champion_version == 1 and reg.get("m@champion").version == 1
        moved = reg.decide("m", kind="manual", alias="champion", challenger=3, promoted=True,
                           reason="by hand")  # fmt: skip
        assert moved.champion_version == 1 and reg.get("m@champion").version == 3
        # a decision about a version that does not exist is refused whole: no alias, no row
        with pytest.raises(NotFoundError):
            reg.decide(
                "m", kind="manual", alias="champion", challenger=9, promoted=True, reason="x"
            )
        assert reg.get("m@champion").version == 3
        assert [d.reason for d in reg.decisions("m")] == ["first", "not better", "by hand"]
        assert [d.reason for d in reg.decisions("m", 2)] == ["not better"]
        assert reg.decisions("m")[0].evidence == {"interval": [0.01, 0.05]}
        with pytest.raises(UsageError):
            reg.decide(
                "m", kind="manual", alias="bad alias!", challenger=1, promoted=True, reason=""
            )
        # the history outlives the versions it names
        reg.delete_version("m", 2)
        assert len(reg.decisions("m")) == 3


def test_opening_an_empty_registry_waits_while_another_creates_it(settings: Settings) -> None:
    """Processes that open a new registry at once do not race to create its tables: while one
    holds the schema change, the next waits for its commit, then finds the tables."""
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(settings.registry_url)
    opened: list[Registry] = []
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":  # what a registry's creating writer holds
                conn.exec_driver_sql("PRAGMA journal_mode = WAL")
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.begin()
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": store_module._SCHEMA_LOCK},
                )
            opener = threading.Thread(target=lambda: opened.append(Registry(settings)))
            opener.start()
            opener.join(1.0)
            assert opener.is_alive(), "it did not wait for the schema change under way"
            store_module._metadata.create_all(conn)  # as the other process would, then commit
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("COMMIT")
            else:
                conn.commit()
        opener.join(30)
        assert not opener.is_alive() and len(opened) == 1
        assert opened[0].register("fraud", writer()).version == 1
    finally:
        for registry in opened:
            registry.close()
        engine.dispose()
