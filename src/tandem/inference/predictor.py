"""The Predictor: a verified Bundle behind the five inference steps.

    preprocess   rows (DataFrame, Arrow table, list of dicts, dict of columns, one dict)
                 -> raw columns; checks every signature column is present
    encode       raw columns -> typed (n, 1) arrays, one per graph input (double or string)
    forward      ONNX Runtime runs preprocessing + model in one graph
    decode       probabilities -> label + per-class probabilities; values -> prediction
    postprocess  decoded columns -> the same kind of container the rows came in

Only numpy, pyarrow and onnxruntime are imported here: no torch, scikit-learn or LightGBM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tandem.bundle import Bundle, Manifest
from tandem.bundle.manifest import graph_feed, split_kinds
from tandem.bundle.outputs import prediction_columns
from tandem.data.images import IMAGE_FEED, IMAGE_STATISTICS, decode_images, image_feed
from tandem.data.images import feed_statistics as image_statistics
from tandem.data.schema import SPECIAL_KINDS, coerce_column, duplicated_names
from tandem.errors import SchemaError
from tandem.features.text import TEXT_FEED, TEXT_STATISTICS, TextTokens
from tandem.features.text import feed_statistics as text_statistics
from tandem.inference.runtime import make_session

__all__ = ["Predictor", "prediction_columns"]

Columns = Mapping[str, Any]
#: a recommender's graph input: catalog positions + 1 of a user's items, (longest, n); and
#: the share of each list the catalog did not know (not a graph input: kept for monitoring)
ITEMS_INPUT = "history"
ITEMS_UNKNOWN = "__unknown_share"
#: texts per ONNX Runtime call (see ``_Special.rows_per_run``)
TEXT_ROWS_PER_RUN = 16


class Predictor:
    """Runs a Bundle on new rows.

    Example:
        >>> import tandem
        >>> p = tandem.load("rain@champion")  # doctest: +SKIP
        >>> p.predict([{"temperature": 0.3, "dew point": -1.2, ...}])  # doctest: +SKIP
        [{'label': 1, 'proba_0': 0.31, 'proba_1': 0.69}]
    """

    def __init__(self, bundle: Bundle, *, threads: int | None = None, spin: bool = True) -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self._session = make_session(bundle.graph, threads=threads, spin=spin)
        self._outputs = [self.manifest.output]
        self._names = [c.name for c in self.manifest.inputs]
        self._index = {name: j for j, name in enumerate(self._names)}
        self._numeric, self._categorical = split_kinds(self.manifest.inputs)
        kinds = {c.kind for c in self.manifest.inputs}
        self._special = _Special(bundle) if kinds & set(SPECIAL_KINDS) else None
        self.rules = None
        if self.manifest.task == "ranking":
            import pyarrow.parquet as pq

            from tandem.inference.rank import CATALOG, RankRules

            catalog = pq.read_table(pa.BufferReader(bundle.extras[CATALOG]))
            self.rules = RankRules(self.manifest.details["rank"], catalog)
        self._decoder = self.manifest.outputs
        self.output_columns = self._decoder.columns

    @property
    def monitored_inputs(self) -> list[str]:
        """What the prediction log keeps of the inputs and monitoring compares: the columns,
        or for an image or text model the per-row numbers of :meth:`input_statistics`."""
        return list(self._special.names) if self._special is not None else list(self._names)

    def input_statistics(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """For an image or text model, the monitored numbers of each row of ``feed`` (an
        :meth:`encode` result): image size, brightness and contrast; text tokens and the share
        the vocabulary does not know. None for a table model (its columns are compared)."""
        return self._special.statistics(feed) if self._special is not None else None

    @property
    def input_names(self) -> list[str]:
        """The signature's columns, in the order a matrix of rows must follow."""
        return list(self._names)

    # -- the five steps ---------------------------------------------------------------------

    def preprocess(self, rows: Any) -> Columns:
        """Pull the signature's columns out of ``rows``; extra columns are ignored."""
        names = self._names
        if isinstance(rows, np.ndarray):
            if rows.ndim != 2 or rows.shape[1] != len(names):
                raise SchemaError(
                    f"a matrix of rows needs shape (n, {len(names)}), one column per input in this "
                    f"order: {names}; got shape {rows.shape}"
                )
            return _MatrixColumns(rows, self._index)
        if isinstance(rows, Mapping):
            if _is_columnar(rows):
                return _pick(names, rows.__getitem__, rows)
            return _pick_rows(names, [rows])
        if isinstance(rows, pa.Table | pa.RecordBatch):
            return _pick(names, rows.column, rows.schema.names)
        if _is_dataframe(rows):
            # training stored column names as strings (a DataFrame's 0, 1, ... became "0", "1")
            by_name = {str(c): c for c in rows.columns}
            if len(by_name) != len(rows.columns):
                _refuse_duplicates(names, rows.columns)
            return _pick(names, lambda n: rows[by_name[n]].to_numpy(), rows.columns)
        if isinstance(rows, Sequence) and not isinstance(rows, str | bytes):
            return _pick_rows(names, rows)
        raise SchemaError(
            f"cannot predict on a {type(rows).__name__}: pass a pandas DataFrame, a pyarrow Table, "
            "a list of dicts, or a dict of columns"
        )

    def encode(self, columns: Columns) -> dict[str, np.ndarray]:
        """The graph inputs: a (k, n) float64 matrix of the numeric columns and an (m, n)
        string matrix of the categorical ones (see :func:`tandem.bundle.manifest.graph_feed`);
        for an image model the decoded pixels and their sizes
        (:func:`tandem.data.images.image_feed`), for a text model token ids and mask."""
        if self._special is not None:
            return self._special.encode(columns)
        if (
            isinstance(columns, _MatrixColumns)
            and not self._categorical
            and columns.matrix.dtype.kind in "fiub"
        ):
            # all-numeric rows in signature order: the graph's column-major input is the
            # transpose, a view (contiguous at one row)
            return graph_feed(columns.matrix.T, [])
        numeric: Any = [columns[c.name] for c in self._numeric]
        # one numpy call for the common case (float arrays, lists of plain numbers); whatever
        # does not come out as a 2-D numeric matrix (None, text, ragged) is coerced column by
        # column, which refuses text rather than parsing it and names the column
        stacked = _stack_numbers(numeric)
        if stacked is not None:
            numeric = stacked
        else:
            numeric = [coerce_column(c, v) for c, v in zip(self._numeric, numeric, strict=True)]
        categorical = [coerce_column(c, columns[c.name]) for c in self._categorical]
        try:
            return graph_feed(numeric, categorical)
        except ValueError:
            lengths = {c.name: len(columns[c.name]) for c in self.manifest.inputs}
            raise SchemaError(
                f"columns have different lengths {lengths}: every column needs one value per row"
            ) from None

    def forward(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output, float64: probabilities (n, n_classes), values (n, 1), distances
        to the centres, components or anomaly scores (see :mod:`tandem.bundle.outputs`)."""
        if self._special is not None:
            if ITEMS_UNKNOWN in feed:  # kept for the log only
                feed = {k: v for k, v in feed.items() if k != ITEMS_UNKNOWN}
            rows = next(iter(feed.values())).shape[-1]
            step = self._special.rows_per_run
            if rows > step:  # a text encoder's attention grows with rows × tokens²
                return np.concatenate(
                    [self._run(self._special.part(feed, a, a + step)) for a in range(0, rows, step)]
                )
        return self._run(feed)

    def _run(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        result: np.ndarray = self._session.run(self._outputs, feed)[0]
        return result

    def decode(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """Output columns in :attr:`output_columns` order (a recommender's after its rank
        rules, see :mod:`tandem.inference.rank`)."""
        if self.rules is not None:
            output = self.rules.apply(output)
        return self._decoder.decode(output)

    def postprocess(self, decoded: dict[str, np.ndarray], rows: Any) -> Any:
        """Decoded columns in the container kind of ``rows``; rows as records (a list of
        dicts, one dict) from a recommender also get ``items``: the recommended items' catalog
        records, best first, each with its score."""
        if self.rules is not None and _as_records(rows):
            records = _records(decoded)
            k = self._decoder.width
            for r in records:
                r["items"] = self.rules.records(
                    [r[f"item_{i}"] for i in range(1, k + 1)],
                    [r[f"score_{i}"] for i in range(1, k + 1)],
                )
            return records[0] if isinstance(rows, Mapping) else records
        if isinstance(rows, pa.Table | pa.RecordBatch):
            return pa.table(decoded)
        if _is_dataframe(rows):
            return type(rows)(decoded, index=rows.index)
        if isinstance(rows, np.ndarray):
            return decoded
        if isinstance(rows, Mapping):
            if _is_columnar(rows):
                return decoded
            return _records(decoded)[0]
        return _records(decoded)

    # -- all of them --------------------------------------------------------------------------

    def predict(self, rows: Any) -> Any:
        """Predictions for ``rows``, in the same kind of container.

        Args:
            rows: a DataFrame, Arrow table, list of dicts, dict of columns (n values each), one
                dict (one row), or a 2-D numpy array of shape (n, k) whose columns follow
                :attr:`input_names`. Columns outside the signature are ignored.

        Returns:
            columns ``label`` and ``proba_<class>`` per class for classification, or
            ``prediction`` for regression, row for row; a dict of numpy columns for a dict of
            columns or a matrix.
        """
        return self.postprocess(self.decode(self.forward(self.encode(self.preprocess(rows)))), rows)

    def predict_columns(self, columns: Columns) -> dict[str, np.ndarray]:
        """The fast path: a dict of columns in, a dict of numpy columns out."""
        return self.decode(self.forward(self.encode(self.preprocess(columns))))


class _Special:
    """The encode step of a model whose one input is an image or a text, and the numbers
    monitoring compares in its place (a pixel or a token is no column to profile)."""

    def __init__(self, bundle: Bundle) -> None:
        manifest = bundle.manifest
        (self.column,) = (c for c in manifest.inputs if c.kind in SPECIAL_KINDS)
        if self.column.kind == "items":
            self.index = {str(item): i + 1 for i, item in enumerate(manifest.classes)}
            self.names = [f"{self.column.name}.{s}" for s in ("length", "unknown_share")]
        elif self.column.kind == "image":
            self.channels = int(manifest.details["image"]["channels"])
            self.names = [f"{self.column.name}.{s}" for s in IMAGE_STATISTICS]
        else:
            text = manifest.details["text"]
            self.tokens = TextTokens(
                bundle.extras[text["tokenizer"]].decode(), text["max_tokens"], text["chunks"]
            )
            self.names = [f"{self.column.name}.{s}" for s in TEXT_STATISTICS]
        #: rows per ONNX Runtime call: a batch job's 4,096 BBC articles at 4 × 256 tokens
        #: asked for 28 GB of attention at once
        self.rows_per_run = TEXT_ROWS_PER_RUN if self.column.kind == "text" else 1024

    def part(self, feed: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of ``feed``; a text feed trimmed to those rows' longest piece."""
        out = {k: v[..., start:stop] for k, v in feed.items()}
        if self.column.kind == "text":
            mask = out[TEXT_FEED[1]]
            tokens = int(np.flatnonzero(mask.any(axis=(1, 2))).max(initial=0)) + 1
            chunks = int(np.flatnonzero(mask.any(axis=(0, 2))).max(initial=0)) + 1
            out = {k: np.ascontiguousarray(v[:tokens, :chunks]) for k, v in out.items()}
        return out

    def encode(self, columns: Columns) -> dict[str, np.ndarray]:
        name = self.column.name
        if self.column.kind == "items":
            return self._histories(columns[name], name)
        if self.column.kind == "text":
            return self.tokens.feed(columns[name], name)
        pixels, sizes = image_feed(decode_images(columns[name], self.channels, name))
        return dict(zip(IMAGE_FEED, (pixels, sizes), strict=True))

    def _histories(self, values: Any, name: str) -> dict[str, np.ndarray]:
        """Lists of item ids → (longest, n) int64 positions in the catalog + 1 (0: nothing;
        the batcher pads with it), and the share of each list the catalog does not know."""
        if hasattr(values, "to_pylist"):
            values = values.to_pylist()
        lists = list(values)
        for row, items in enumerate(lists):
            if not isinstance(items, list | tuple | np.ndarray):
                raise SchemaError(
                    f"row {row} of column '{name}' is {items!r}: give the user's items as a "
                    'list of ids, e.g. ["sku-1", "sku-7"] (an empty list for a new user)'
                )
        known = [[self.index.get(str(i), 0) for i in items] for items in lists]
        longest = max((len(k) for k in known), default=0) or 1
        positions = np.zeros((longest, len(known)), dtype=np.int64)
        unknown = np.zeros(len(known))
        for row, k in enumerate(known):
            positions[: len(k), row] = k
            unknown[row] = k.count(0) / len(k) if k else 0.0
        return {ITEMS_INPUT: positions, ITEMS_UNKNOWN: unknown[None, :]}

    def statistics(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.column.kind == "items":
            length = (feed[ITEMS_INPUT] > 0).sum(axis=0) + 0.0
            return dict(zip(self.names, (length, feed[ITEMS_UNKNOWN][0]), strict=True))
        if self.column.kind == "text":
            ids, mask = (feed[k] for k in TEXT_FEED)
            stats = text_statistics(ids, mask, self.tokens.unknown_id)
        else:
            stats = image_statistics(*(feed[k] for k in IMAGE_FEED))
        return {n: stats[:, j] for j, n in enumerate(self.names)}


class _MatrixColumns(Mapping[str, np.ndarray]):
    """An (n, k) matrix of rows seen as its k named columns, without copying."""

    def __init__(self, matrix: np.ndarray, index: dict[str, int]) -> None:
        self.matrix = matrix
        self._index = index

    def __getitem__(self, name: str) -> np.ndarray:
        return self.matrix[:, self._index[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def _stack_numbers(columns: list[Any]) -> np.ndarray | None:
    if not columns:
        return None
    try:
        stacked = np.array(columns)
    except ValueError:  # ragged
        return None
    if stacked.ndim != 2 or stacked.dtype.kind not in "fiub":
        return None
    return stacked


def _pick(names: list[str], get: Callable[[str], Any], have: Iterable[str]) -> Columns:
    try:
        return {n: get(n) for n in names}
    except KeyError:
        _refuse_duplicates(names, have)
        present = {str(h) for h in have}
        missing = [n for n in names if n not in present]
        raise SchemaError(f"missing column(s) {missing}: the model needs {names}") from None


def _refuse_duplicates(names: list[str], have: Iterable[Any]) -> None:
    twice = [n for n in duplicated_names(have) if n in names]
    if twice:
        raise SchemaError(f"more than one column is named {twice}: keep one of each")


def _pick_rows(names: list[str], rows: Sequence[Any]) -> Columns:
    try:
        return {n: [r[n] for r in rows] for n in names}
    except (KeyError, TypeError, IndexError):
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping):
                raise SchemaError(
                    f"row {i} is a {type(r).__name__}: rows must map column names to values, e.g. [{{'age': 41, ...}}]"
                ) from None
            lacking = [n for n in names if n not in r]
            if lacking:
                raise SchemaError(
                    f"row {i} lacks column(s) {lacking}; every row needs {names}"
                ) from None
        raise


def _as_records(rows: Any) -> bool:
    """Whether :meth:`Predictor.postprocess` answers ``rows`` with records."""
    if isinstance(rows, pa.Table | pa.RecordBatch | np.ndarray) or _is_dataframe(rows):
        return False
    return not (isinstance(rows, Mapping) and _is_columnar(rows))


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and hasattr(obj, "columns")


_COLUMN_TYPES = (np.ndarray, list, tuple, pa.Array, pa.ChunkedArray)


def _is_columnar(mapping: Mapping[str, Any]) -> bool:
    # a dict of columns holds arrays, lists or Series; one row holds scalars (numpy scalars
    # have ndim 0); the first value decides
    first = next(iter(mapping.values()), None)
    return isinstance(first, _COLUMN_TYPES) or getattr(first, "ndim", 0) > 0


def _records(decoded: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    names = list(decoded)
    return [
        dict(zip(names, values, strict=True))
        for values in zip(*(decoded[n].tolist() for n in names), strict=True)
    ]
