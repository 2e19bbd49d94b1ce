"""Data-parallel training on a real local Ray instance (Ray Train, DDP over gloo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tandem.errors import ConfigError
from tandem.registry import Registry
from tandem.training.loop import TorchOptions
from tandem.training.train import CheckpointOptions, train

pytest.importorskip("ray.train.torch")


def _table() -> pa.Table:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=3000) > 0).astype(np.int64)
    return pa.table({**{f"f{i}": x[:, i] for i in range(6)}, "y": y})


@pytest.mark.slow
def test_two_ray_workers_reach_the_single_process_metric(home: Path) -> None:
    params = {"max_epochs": 8, "batch_size": 32}
    with Registry() as registry:
        one = train(_table(), target="y", name="one", model="mlp", params=params,
                    registry=registry)  # fmt: skip
        two = train(_table(), target="y", name="two", model="mlp", params=params,
                    registry=registry, torch=TorchOptions(engine="ray", workers=2))  # fmt: skip
    single, parallel = one.version.metrics, two.version.metrics
    # the ledger counts the workers' CPU, though they are not this process's children: at
    # least half of one worker's busy epochs (two workers ran them)
    profile, epochs = two.profile, two.pipeline.family.describe()["history"]  # type: ignore[attr-defined]
    assert "Ray Train workers" in profile.source
    assert 0.5 * sum(e["seconds"] for e in epochs) < profile.cpu_elsewhere_seconds
    assert profile.cpu_elsewhere_seconds < profile.cpu_seconds
    assert one.profile.cpu_elsewhere_seconds == 0
    assert parallel["roc_auc"] == pytest.approx(single["roc_auc"], abs=0.02)
    assert parallel["accuracy"] == pytest.approx(single["accuracy"], abs=0.03)
    assert parallel["roc_auc"] > 0.9  # it learned, on both workers' shares
    # the epochs the workers ran are the run's epochs, with their metrics
    history = two.pipeline.family.describe()["history"]  # type: ignore[attr-defined]
    assert 1 <= len(history) <= 8 and "roc_auc" in history[0]["metrics"]
    import ray

    assert not ray.is_initialized()  # the local instance it started is stopped


def test_ray_engine_refuses_resume(home: Path) -> None:
    with pytest.raises(ConfigError, match="--resume works with the local engine"):
        train(_table(), target="y", name="m", model="mlp",
              torch=TorchOptions(engine="ray", workers=2),
              checkpoints=CheckpointOptions(resume=True))  # fmt: skip
