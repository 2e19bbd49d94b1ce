"""Unsupervised families: k-means, PCA and an autoencoder anomaly scorer.

They learn from rows without a target, on the same preprocessed features (imputed, scaled,
one-hot) as the supervised families, and export to ONNX like them, so a Bundle of one serves,
batch-scores and is monitored like any other. What each outputs:

- ``kmeans``: the Euclidean distance from a row to every centre (n, k); decode names the
  nearest centre ``cluster``. ``clusters`` unset: k from 2 to 10, the one with the best
  silhouette on the validation rows.
- ``pca``: the projections on the first k principal axes (n, k). ``components`` unset: the
  fewest axes that explain ``variance`` (90 %) of the training rows' variance.
- ``autoencoder``: the mean squared error of a row's reconstruction by a bottleneck network
  (n, 1); decode flags rows above a threshold, the ``1 - contamination`` quantile of the
  scores of the validation rows (training data the weights were not fitted on), so about
  that share of normal data is flagged.

Scores are in the units of the preprocessed features (standard deviations of the training
rows), so they compare across columns and versions of the same data.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from sklearn import decomposition
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import silhouette_score
from torch import nn

from tandem.bundle.graph import GraphBuilder
from tandem.bundle.outputs import Outputs
from tandem.data.schema import Task
from tandem.errors import ConfigError, DataError
from tandem.models.base import Family, FitContext
from tandem.models.mlp import embed_module
from tandem.training.loop import EpochRecord, LoopConfig, fit_torch, run_summary

__all__ = ["PCA", "UNSUPERVISED", "UNSUPERVISED_TASKS", "Autoencoder", "KMeans", "Unsupervised"]

#: rows the silhouette is computed on (it is quadratic in rows)
SILHOUETTE_ROWS = 2000
#: k tried when ``clusters`` is unset
AUTO_CLUSTERS = range(2, 11)


class Unsupervised(Family):
    """A family that learns from X alone; ``y`` is ignored. ``predict`` gives the graph's
    output (see :mod:`tandem.bundle.outputs`); :meth:`evaluate` the split's metrics."""

    task: ClassVar[Task]

    @property
    def outputs(self) -> Outputs:
        return Outputs(self.task, width=self._width())

    def _width(self) -> int:
        return 0

    def evaluate(self, X: np.ndarray) -> dict[str, float]:
        raise NotImplementedError


class KMeans(Unsupervised):
    name = "kmeans"
    task = "clustering"

    def __init__(self, *, clusters: int | None = None, n_init: int = 3) -> None:
        if clusters is not None and clusters < 2:
            raise ConfigError(f"clusters must be >= 2; got {clusters}")
        if n_init < 1:
            raise ConfigError(f"n_init must be >= 1; got {n_init}")
        self.clusters = clusters
        self.n_init = n_init

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, ctx: FitContext
    ) -> KMeans:
        candidates = [self.clusters] if self.clusters else list(AUTO_CLUSTERS)
        candidates = [k for k in candidates if k < len(X)]
        if not candidates:
            raise DataError(f"k-means needs more rows than clusters; got {len(X)} rows")
        self.tried_: dict[int, float] = {}
        best: tuple[float, SkKMeans] | None = None
        for epoch, k in enumerate(candidates, start=1):
            model = SkKMeans(n_clusters=k, n_init=self.n_init, random_state=ctx.seed).fit(X)
            quality = _silhouette(X_val, model.predict(X_val), ctx.seed)
            self.tried_[k] = quality
            ctx.epoch_done(epoch, silhouette=quality, inertia=float(model.inertia_))
            if best is None or quality > best[0]:
                best = (quality, model)
            if ctx.time_left < 0:
                break
        assert best is not None
        self.model_ = best[1]
        self.centres_ = np.asarray(self.model_.cluster_centers_, dtype=np.float64)
        return self

    def _width(self) -> int:
        return int(self.centres_.shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model_.transform(X), dtype=np.float64)

    def evaluate(self, X: np.ndarray) -> dict[str, float]:
        distances = self.predict(X)
        nearest = distances.argmin(axis=1)
        return {
            "silhouette": _silhouette(X, nearest, 0),
            "inertia": float(np.mean(distances.min(axis=1) ** 2)),
            "smallest_cluster_share": float(
                np.bincount(nearest, minlength=self._width()).min() / max(len(X), 1)
            ),
        }

    def to_onnx(self, g: GraphBuilder, features: str) -> str:
        # |x - c|² = |x|² - 2 x·c + |c|²; rounding can leave it a hair below 0 at a centre
        c = self.centres_
        x2 = g.node("ReduceSum", [g.node("Mul", [features, features]), g.const(np.array([1]))])
        cross = g.node("MatMul", [features, g.const(c.T.copy())])
        squared = g.node(
            "Add",
            [g.node("Sub", [x2, g.node("Mul", [cross, g.const(np.array(2.0))])]),
             g.const((c * c).sum(axis=1)[None, :])],
        )  # fmt: skip
        return g.node("Sqrt", [g.node("Relu", [squared])])

    def describe(self) -> dict[str, Any]:
        return {
            "clusters": self._width(),
            "chosen_by": "given" if self.clusters else "validation silhouette",
            "silhouette_by_k": {str(k): v for k, v in self.tried_.items()},
            "sizes": np.bincount(self.model_.labels_, minlength=self._width()).tolist(),
        }


class PCA(Unsupervised):
    name = "pca"
    task = "projection"

    def __init__(self, *, components: int | None = None, variance: float = 0.9) -> None:
        if components is not None and components < 1:
            raise ConfigError(f"components must be >= 1; got {components}")
        if not 0 < variance <= 1:
            raise ConfigError(f"variance must be in (0, 1]; got {variance}")
        self.components = components
        self.variance = variance

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, ctx: FitContext
    ) -> PCA:
        most = min(X.shape)
        if self.components is not None and self.components > most:
            raise ConfigError(
                f"components={self.components} exceeds what the data has ({most}: the smaller "
                "of rows and features after preprocessing)"
            )
        full = decomposition.PCA(random_state=ctx.seed).fit(X)
        cumulative = np.cumsum(full.explained_variance_ratio_)
        k = self.components or int(min(np.searchsorted(cumulative, self.variance) + 1, most))
        self.mean_ = np.asarray(full.mean_, dtype=np.float64)
        self.axes_ = np.asarray(full.components_[:k], dtype=np.float64)
        self.ratios_ = np.asarray(full.explained_variance_ratio_[:k], dtype=np.float64)
        ctx.epoch_done(1, explained_variance=float(self.ratios_.sum()))
        return self

    def _width(self) -> int:
        return int(self.axes_.shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray((X - self.mean_) @ self.axes_.T, dtype=np.float64)

    def evaluate(self, X: np.ndarray) -> dict[str, float]:
        centred = X - self.mean_
        rebuilt = self.predict(X) @ self.axes_
        total = float(np.sum(centred**2)) or 1.0
        return {
            "explained_variance": 1.0 - float(np.sum((centred - rebuilt) ** 2)) / total,
            "reconstruction_error": float(np.mean((centred - rebuilt) ** 2)),
        }

    def to_onnx(self, g: GraphBuilder, features: str) -> str:
        centred = g.node("Sub", [features, g.const(self.mean_[None, :])])
        return g.node("MatMul", [centred, g.const(self.axes_.T.copy())])

    def describe(self) -> dict[str, Any]:
        return {
            "components": self._width(),
            "chosen_by": "given" if self.components else f"{self.variance:.0%} of the variance",
            "explained_variance_ratio": self.ratios_.tolist(),
        }


class _Reconstruction(nn.Module):
    """float64 features in, the mean squared reconstruction error per row (n, 1) out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-1e6, 1e6).float()
        return ((self.net(x) - x) ** 2).mean(dim=1, keepdim=True).double()  # type: ignore[no-any-return]


class Autoencoder(Unsupervised):
    """A bottleneck network trained to reproduce its input; rows it reproduces badly are
    unlike the training rows. Takes the loop's hyperparameters as keywords too."""

    name = "autoencoder"
    task = "anomaly"

    def __init__(
        self, *, hidden: int = 64, bottleneck: int | None = None, contamination: float = 0.01,
        **loop: Any,
    ) -> None:  # fmt: skip
        if hidden < 1 or (bottleneck is not None and bottleneck < 1):
            raise ConfigError("hidden and bottleneck must be >= 1")
        if not 0 < contamination < 0.5:
            raise ConfigError(
                f"contamination (the share of training rows above the threshold) must be in "
                f"(0, 0.5); got {contamination}"
            )
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.contamination = contamination
        self.config = LoopConfig(**loop)

    @classmethod
    def settings(cls) -> list[str]:
        return ["hidden", "bottleneck", "contamination", *LoopConfig.__dataclass_fields__]

    @property
    def outputs(self) -> Outputs:
        return Outputs(self.task, threshold=self.threshold_)

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, ctx: FitContext
    ) -> Autoencoder:
        if self.config.monitor != "val_loss":
            raise ConfigError("the autoencoder monitors val_loss (its reconstruction error)")
        torch.manual_seed(ctx.seed)
        width = X.shape[1]
        narrow = self.bottleneck or max(2, width // 4)
        net = nn.Sequential(
            nn.Linear(width, self.hidden), nn.ReLU(), nn.Linear(self.hidden, narrow), nn.ReLU(),
            nn.Linear(narrow, self.hidden), nn.ReLU(), nn.Linear(self.hidden, width),
        )  # fmt: skip
        data = (X, X.astype(np.float32), X_val, X_val.astype(np.float32))
        self.history_: list[EpochRecord] = fit_torch(
            net, nn.MSELoss(), data, config=self.config, seed=ctx.seed, deadline=ctx.deadline,
            on_epoch=ctx.epoch_done, checkpoint=ctx.checkpoint,
        )  # fmt: skip
        self.scored_ = _Reconstruction(net.cpu()).eval()
        self.widths_ = [self.hidden, narrow, self.hidden]
        self.n_features_ = width
        # on rows the weights never fitted: training rows score lower than new normal rows
        # (wine: 26 % of test rows above a threshold set on train rows, at 1 % contamination)
        held = X_val if len(X_val) else X
        self.threshold_ = float(np.quantile(self.predict(held), 1 - self.contamination))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.scored_(torch.from_numpy(np.ascontiguousarray(X))).numpy()
        return np.asarray(out[:, 0], dtype=np.float64)

    def evaluate(self, X: np.ndarray) -> dict[str, float]:
        scores = self.predict(X)
        return {
            "reconstruction_error": float(scores.mean()),
            "anomaly_rate": float(np.mean(scores > self.threshold_)),
        }

    def to_onnx(self, g: GraphBuilder, features: str) -> str:
        example = torch.zeros(1, self.n_features_, dtype=torch.float64)
        return embed_module(g, self.scored_, example, features, "autoencoder")

    def describe(self) -> dict[str, Any]:
        return {
            "widths": self.widths_,
            "threshold": self.threshold_,
            "contamination": self.contamination,
            **run_summary(self.history_, self.config),
        }


def _silhouette(X: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """The mean silhouette of ``labels`` on at most :data:`SILHOUETTE_ROWS` rows (-1 when
    every row falls in one cluster: no structure found)."""
    if len(X) > SILHOUETTE_ROWS:
        pick = np.random.default_rng(seed).choice(len(X), SILHOUETTE_ROWS, replace=False)
        X, labels = X[pick], labels[pick]
    if not 2 <= len(np.unique(labels)) < len(X):
        return -1.0
    return float(silhouette_score(X, labels))


#: ``--model`` name -> family, for data without a target
UNSUPERVISED: dict[str, type[Unsupervised]] = {f.name: f for f in (KMeans, PCA, Autoencoder)}
#: task -> the family that does it
UNSUPERVISED_TASKS: dict[str, str] = {f.task: f.name for f in UNSUPERVISED.values()}
