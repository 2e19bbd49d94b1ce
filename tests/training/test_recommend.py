"""The rank step: a recommender learns item embeddings from (user, item) rows, and its Bundle's
declarative rules (exclude, require, boost, top k) shape what it serves and batch-scores,
through all five inference steps, with catalog records in the answer."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tandem
from tandem import ConfigError, DataError, Registry, SchemaError, Settings
from tandem.batch import BatchOptions, run_batch
from tandem.bundle.outputs import Outputs
from tests.serving.conftest import running_server

CATEGORIES = np.array(["books", "music", "games", "garden"])
RULES = {"top_k": 5, "exclude": ["sku-3"], "require": {"in_stock": True},
         "boosts": [{"where": {"category": "garden"}, "add": 0.5}]}  # fmt: skip


def shop(folder: Path, users: int = 1500, items: int = 120, seed: int = 0) -> tuple[Path, Path]:
    """Users who each like two of four categories take 3–8 of their items; a catalog."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 4, items)
    who, what = [], []
    for u in range(users):
        pool = np.flatnonzero(np.isin(category, rng.choice(4, 2, replace=False)))
        for i in rng.choice(pool, rng.integers(3, 9), replace=False):
            who.append(f"u{u}")
            what.append(f"sku-{i}")
    interactions, catalog = folder / "interactions.csv", folder / "catalog.csv"
    pacsv.write_csv(pa.table({"customer": who, "product": what}), interactions)
    pacsv.write_csv(pa.table({
        "id": [f"sku-{i}" for i in range(items)], "category": CATEGORIES[category],
        "in_stock": np.arange(items) % 10 != 0, "title": [f"Item {i}" for i in range(items)],
    }), catalog)  # fmt: skip
    return interactions, catalog


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("shop")
    interactions, catalog = shop(folder)
    home = folder / "home"
    with Registry(Settings(home=home)) as reg:
        result = tandem.train(
            interactions, target=None, kind="recommender", name="recs", registry=reg,
            params={"user": "customer", "item": "product", "items": str(catalog), "rank": RULES},
        )  # fmt: skip
        assert result.task == "ranking"
    yield home, catalog


def test_it_beats_recommending_the_most_popular_items(trained: tuple[Path, Path]) -> None:
    home, _ = trained
    with Registry(Settings(home=home)) as reg:
        metrics = reg.get("recs").metrics
    assert metrics["hit_rate"] > metrics["popularity_hit_rate"], metrics


def test_the_rules_shape_every_list_and_records_come_back(trained: tuple[Path, Path]) -> None:
    home, catalog_file = trained
    predictor = tandem.load("recs", registry=Registry(Settings(home=home)))
    catalog = {r["id"]: r for r in pacsv.read_csv(catalog_file).to_pylist()}
    rng = np.random.default_rng(1)
    histories = [[f"sku-{i}" for i in rng.choice(120, rng.integers(0, 6), replace=False)]
                 for _ in range(200)]  # fmt: skip
    answers = predictor.predict([{"history": h} for h in histories])
    for history, answer in zip(histories, answers, strict=True):
        ids = [answer[f"item_{i}"] for i in range(1, 6)]
        scores = [answer[f"score_{i}"] for i in range(1, 6)]
        assert len(set(ids)) == 5 and scores == sorted(scores, reverse=True)
        assert not set(ids) & set(history)  # what the user has is not recommended again
        assert "sku-3" not in ids  # excluded
        assert all(catalog[i]["in_stock"] for i in ids)  # required
        assert [r["id"] for r in answer["items"]] == ids  # post-process: catalog records
        assert answer["items"][0]["title"] == catalog[ids[0]]["title"]
    # the boost: garden items rise
    share = np.mean([catalog[a["item_1"]]["category"] == "garden" for a in answers])
    raw = predictor.forward(predictor.encode({"history": histories}))
    assert predictor.rules is not None
    unboosted = np.where(predictor.rules.allowed, raw, -np.inf).argmax(axis=1)
    ids = predictor.manifest.classes
    before = np.mean([catalog[ids[i]]["category"] == "garden" for i in unboosted])
    assert share > 0.5 and share > before + 0.2, (share, before)


def test_serving_and_batch_give_the_same_lists(trained: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = trained
    rows = [{"history": ["sku-1", "sku-5"]}, {"history": []}, {"history": ["sku-999"]}]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "recs.parquet"
    with Registry(Settings(home=home)) as reg:
        run_batch("recs", BatchOptions([source], out), registry=reg)
        local = tandem.load("recs", registry=reg).predict(rows)
    batch = pq.read_table(out).to_pylist()
    with running_server(["recs"], home) as server:
        request = urllib.request.Request(
            f"{server.url}/invocations", json.dumps({"dataframe_records": rows}).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            served = json.loads(response.read())["predictions"]
    for b, s, p in zip(batch, served, local, strict=True):
        assert [b[f"item_{i}"] for i in range(1, 6)] == [s[f"item_{i}"] for i in range(1, 6)]
        assert s["items"] == p["items"]
    assert local[1] == local[2]  # an unknown item tells nothing: a new user's list


def test_bad_rules_catalogs_and_histories_are_refused(
    trained: tuple[Path, Path], tmp_path: Path, registry: Registry
) -> None:
    interactions, catalog = shop(tmp_path, users=60)
    base = {"user": "customer", "item": "product", "items": str(catalog)}

    def train(**params: object) -> None:
        tandem.train(interactions, target=None, kind="recommender", name="r", registry=registry,
                     params={**base, **params})  # fmt: skip

    with pytest.raises(ConfigError, match=r"attribute\(s\) \['colour'\]"):
        train(rank={"require": {"colour": "red"}})
    with pytest.raises(ConfigError, match="top_k must be"):
        train(rank={"top_k": 0})
    with pytest.raises(ConfigError, match=r"unknown rank rule\(s\) \['sort'\]"):
        train(rank={"sort": "price"})
    small = tmp_path / "small.csv"
    pacsv.write_csv(pacsv.read_csv(catalog).slice(0, 50), small)
    with pytest.raises(DataError, match="not in the catalog"):
        train(items=str(small))
    with pytest.raises(DataError, match="no column 'user'"):
        tandem.train(interactions, target=None, kind="recommender", name="r", registry=registry)
    with pytest.raises(ConfigError, match="not a target"):
        tandem.train(
            interactions, target="product", kind="recommender", name="r", registry=registry
        )
    assert registry.list_models() == []
    predictor = tandem.load("recs", registry=Registry(Settings(home=trained[0])))
    with pytest.raises(SchemaError, match="list of ids"):
        predictor.predict([{"history": "sku-1"}])


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.one_of(st.floats(-5, 5), st.just(float("-inf"))), min_size=6, max_size=6),
             min_size=1, max_size=8),
    st.integers(1, 6),
)  # fmt: skip
def test_the_top_k_is_the_k_best_allowed_items_best_first(rows: list[list[float]], k: int) -> None:
    scores = np.array(rows)
    ids = tuple(f"i{j}" for j in range(6))
    decoded = Outputs("ranking", ids, k).decode(scores)
    for r, row in enumerate(scores):
        allowed = sorted((s for s in row if np.isfinite(s)), reverse=True)[:k]
        got = [decoded[f"score_{i}"][r] for i in range(1, k + 1)]
        np.testing.assert_allclose(got[: len(allowed)], allowed)
        assert all(np.isnan(g) for g in got[len(allowed) :])  # no item to fill the slot
        picked = [decoded[f"item_{i}"][r] for i in range(1, k + 1)]
        assert all(p is None for p in picked[len(allowed) :])
        for p, s in zip(picked[: len(allowed)], got[: len(allowed)], strict=True):
            assert row[ids.index(p)] == s
