"""The rank step: declarative business rules between a recommender's scores and its top k.

A ranking Bundle's graph scores every item of its catalog for each row (the items a user has
already taken are scored -inf there). The manifest's ``rank`` section then says, in data,
what the business wants of the list; the Predictor applies it before taking the top k::

    {"top_k": 10,
     "exclude": ["sku-17", "sku-18"],                 # never recommend these ids
     "require": {"in_stock": true, "region": ["eu", "uk"]},   # attribute equals (one of)
     "boosts": [{"where": {"category": "sale"}, "add": 0.1}]}  # added to the score

Attributes come from the catalog kept in the Bundle (``items.parquet``: an ``id`` column and
any others), which the post-process step also uses to return each recommended item as a
record. Rules are checked when the model is trained (an unknown attribute or id is refused
then), and compiled once into a per-item allow mask and bonus vector, so applying them costs
one vector operation per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tandem.errors import ConfigError

__all__ = ["CATALOG", "ITEM_ID", "RankRules"]

#: the Bundle file of the item catalog, and its id column
CATALOG = "items.parquet"
ITEM_ID = "id"
_KEYS = {"top_k", "exclude", "require", "boosts"}


class RankRules:
    """Compiled rules over a catalog whose rows follow the model's item order."""

    def __init__(self, spec: Mapping[str, Any], catalog: pa.Table) -> None:
        check_spec(spec, catalog)
        self.spec = dict(spec)
        self.top_k = int(spec.get("top_k", 10))
        ids = catalog.column(ITEM_ID).to_pylist()
        self.allowed = np.ones(len(ids), dtype=bool)
        excluded = {str(v) for v in spec.get("exclude", [])}
        self.allowed &= np.array([str(i) not in excluded for i in ids], dtype=bool)
        for attribute, wanted in spec.get("require", {}).items():
            self.allowed &= _matches(catalog, attribute, wanted)
        self.bonus = np.zeros(len(ids))
        for boost in spec.get("boosts", []):
            where = np.ones(len(ids), dtype=bool)
            for attribute, wanted in boost["where"].items():
                where &= _matches(catalog, attribute, wanted)
            self.bonus += np.where(where, float(boost["add"]), 0.0)
        self.neutral = bool(self.allowed.all() and not self.bonus.any())
        self._records = catalog.to_pylist()

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Scores with the boosts added and the items the rules leave out at -inf."""
        if self.neutral:
            return scores
        return np.where(self.allowed, scores + self.bonus, -np.inf)

    def records(self, ids: Sequence[Any], scores: Sequence[float]) -> list[dict[str, Any]]:
        """The catalog records of recommended ids (in order), each with its ``score``."""
        by_id = self._by_id()
        return [{**by_id[i], "score": s} for i, s in zip(ids, scores, strict=True) if i is not None]

    def _by_id(self) -> dict[Any, dict[str, Any]]:
        if not hasattr(self, "_index"):
            self._index = {r[ITEM_ID]: r for r in self._records}
        return self._index


def _matches(catalog: pa.Table, attribute: str, wanted: Any) -> np.ndarray:
    values = catalog.column(attribute).to_pylist()
    options = wanted if isinstance(wanted, list) else [wanted]
    return np.array([v in options for v in values], dtype=bool)


def check_spec(spec: Mapping[str, Any], catalog: pa.Table) -> None:
    """ConfigError naming what is wrong with a rank spec over ``catalog``."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f'the rank rules must be an object like {{"top_k": 10}}; got {spec!r}')
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown rank rule(s) {unknown}: the rules are {sorted(_KEYS)}")
    top_k = spec.get("top_k", 10)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= catalog.num_rows:
        raise ConfigError(
            f"top_k must be 1 to the {catalog.num_rows} items of the catalog; got {top_k!r}"
        )
    ids = {str(v) for v in catalog.column(ITEM_ID).to_pylist()}
    missing = [v for v in spec.get("exclude", []) if str(v) not in ids]
    if missing:
        raise ConfigError(f"exclude names id(s) {missing[:5]} that are not in the catalog")
    attributes = set(catalog.column_names) - {ITEM_ID}
    wheres = [spec.get("require", {}), *(b.get("where", {}) for b in spec.get("boosts", []))]
    for where in wheres:
        if not isinstance(where, Mapping):
            raise ConfigError(
                f"require and where take an object of attribute: value; got {where!r}"
            )
        lacking = sorted(set(where) - attributes)
        if lacking:
            raise ConfigError(
                f"the rank rules name attribute(s) {lacking} that the item catalog lacks; it "
                f"has {sorted(attributes) or 'none'} (pass a catalog with them)"
            )
    for boost in spec.get("boosts", []):
        if not isinstance(boost, Mapping) or set(boost) != {"where", "add"}:
            raise ConfigError(f'a boost is {{"where": {{...}}, "add": number}}; got {boost!r}')
        if isinstance(boost["add"], bool) or not isinstance(boost["add"], int | float):
            raise ConfigError(f"a boost's add must be a number; got {boost['add']!r}")
