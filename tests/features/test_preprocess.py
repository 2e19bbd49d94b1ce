from __future__ import annotations

import numpy as np
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tandem.bundle.graph import GraphBuilder
from tandem.bundle.manifest import graph_feed, split_kinds
from tandem.data.schema import ColumnSpec
from tandem.features.preprocess import MAX_CATEGORIES, Preprocessor

floats = st.one_of(st.floats(-1e6, 1e6), st.just(float("nan")))
words = st.sampled_from(["", "a", "b", "c", "d", "unseen"])


def _graph(pre: Preprocessor) -> ort.InferenceSession:
    g = GraphBuilder("pre")
    g.output(pre.to_onnx(g), "features", "double", [None, None])
    return ort.InferenceSession(g.build().SerializeToString(), providers=["CPUExecutionProvider"])


@settings(max_examples=40, deadline=None)
@given(
    train_num=hnp.arrays(np.float64, st.tuples(st.integers(2, 40), st.just(2)), elements=floats),
    train_cat=st.lists(words.filter(lambda w: w != "unseen"), min_size=40, max_size=40),
    new_num=hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.just(2)), elements=floats),
    new_cat=st.lists(words, min_size=20, max_size=20),
)
def test_graph_computes_exactly_what_transform_computes(
    train_num: np.ndarray, train_cat: list[str], new_num: np.ndarray, new_cat: list[str]
) -> None:
    n, m = len(train_num), len(new_num)
    specs = [
        ColumnSpec(name="u", kind="numeric"),
        ColumnSpec(name="v", kind="boolean"),
        ColumnSpec(name="c", kind="categorical"),
    ]
    train = {"u": train_num[:, 0], "v": train_num[:, 1], "c": np.array(train_cat[:n], dtype=object)}
    new = {"u": new_num[:, 0], "v": new_num[:, 1], "c": np.array(new_cat[:m], dtype=object)}
    pre = Preprocessor(specs).fit(train)
    expected = pre.transform(new)
    numeric, categorical = split_kinds(pre.columns)
    feed = graph_feed([new[c.name] for c in numeric], [new[c.name] for c in categorical])
    got = _graph(pre).run(None, feed)[0]
    assert got.shape == expected.shape == (m, len(pre.feature_names))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert not np.isnan(got).any()  # every missing value is imputed


def test_unseen_and_missing_categories_use_the_unknown_bucket() -> None:
    pre = Preprocessor([ColumnSpec(name="c", kind="categorical")]).fit(
        {"c": np.array(["a", "b", "a"], dtype=object)}
    )
    out = pre.transform({"c": np.array(["a", "zzz", ""], dtype=object)})
    assert pre.feature_names == ["c=a", "c=b", "c=__unknown__"]
    assert out.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]


def test_rare_categories_beyond_the_cap_share_the_unknown_bucket() -> None:
    values = np.array(
        [f"k{i}" for i in range(MAX_CATEGORIES + 10) for _ in range(1 + (i < MAX_CATEGORIES))],
        dtype=object,
    )
    pre = Preprocessor([ColumnSpec(name="c", kind="categorical")]).fit({"c": values})
    assert len(pre.columns[0].categories) == MAX_CATEGORIES
    assert f"k{MAX_CATEGORIES + 5}" not in pre.columns[0].categories


def test_missing_indicator_only_for_columns_that_had_missing_values() -> None:
    specs = [ColumnSpec(name="full", kind="numeric"), ColumnSpec(name="holes", kind="numeric")]
    pre = Preprocessor(specs).fit(
        {"full": np.array([1.0, 2.0, 3.0]), "holes": np.array([1.0, np.nan, 5.0])}
    )
    assert pre.feature_names == ["full", "holes", "holes__missing"]
    row = pre.transform({"full": np.array([np.nan]), "holes": np.array([np.nan])})
    # missing -> median, then standardised; the indicator says it was missing
    assert row[0, 0] == (2.0 - 2.0) / pre.scales_[0]
    assert row[0, 2] == 1.0
