from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from tandem.training.loop import LoopConfig, fit_torch


def _problem(seed: int = 0) -> tuple[np.ndarray, ...]:
    # few noisy rows and a wide network: validation loss falls, then rises as it overfits
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 4))
    y = (x[:, 0] + rng.normal(scale=1.0, size=80)).astype(np.float32)
    return x[:60], y[:60], x[60:], y[60:]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
    )


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(pred.squeeze(1), target)


def _val_loss(net: nn.Module, x_val: np.ndarray, y_val: np.ndarray) -> float:
    with torch.no_grad():
        return float(_mse(net(torch.from_numpy(x_val).float()), torch.from_numpy(y_val)))


def test_stops_on_patience_and_keeps_the_best_epoch() -> None:
    data = _problem()
    net = _net()
    config = LoopConfig(max_epochs=300, batch_size=16, lr=1e-2, patience=5)
    history = fit_torch(net, _mse, data, config=config, seed=0, deadline=math.inf)
    losses = [h.val_loss for h in history]
    best = int(np.argmin(losses))
    assert len(history) < config.max_epochs, "early stopping never triggered"
    assert len(history) == best + 1 + config.patience
    assert _val_loss(net, data[2], data[3]) == pytest.approx(losses[best], rel=1e-6)
    assert losses[-1] > losses[best]  # the last epoch was worse: restoring mattered


def test_learning_rate_warms_up_then_decays() -> None:
    config = LoopConfig(max_epochs=30, batch_size=16, lr=1e-2, patience=100, warmup_epochs=2)
    history = fit_torch(_net(), _mse, _problem(), config=config, seed=0, deadline=math.inf)
    lrs = [h.lr for h in history]
    assert lrs[0] < lrs[1] <= config.lr * 1.0001  # warm-up
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:]))  # cosine decay
    assert lrs[-1] < 0.05 * config.lr


def test_same_seed_same_weights_and_deadline_respected() -> None:
    config = LoopConfig(max_epochs=20, batch_size=16)
    a, b = _net(), _net()
    fit_torch(a, _mse, _problem(), config=config, seed=3, deadline=math.inf)
    fit_torch(b, _mse, _problem(), config=config, seed=3, deadline=math.inf)
    for pa_, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa_, pb)
    started = time.monotonic()
    history = fit_torch(
        _net(),
        _mse,
        _problem(),
        config=LoopConfig(max_epochs=10_000, patience=10_000),
        seed=0,
        deadline=started + 0.5,
    )
    assert time.monotonic() - started < 5 and len(history) < 10_000


def test_config_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="patience must be >= 1"):
        LoopConfig(patience=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        LoopConfig(lr=0)
