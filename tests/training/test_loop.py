from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tandem.errors import ConfigError
from tandem.models.base import FitContext
from tandem.models.mlp import MLP
from tandem.training.loop import Hardware, LoopConfig, TorchOptions, fit_torch, resolve_hardware


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
    with pytest.raises(ConfigError, match="patience must be >= 1"):
        LoopConfig(patience=0)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        LoopConfig(lr=0)
    with pytest.raises(ConfigError, match="unknown schedule 'cosine': choose warmup-cosine"):
        LoopConfig(schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="clip_norm must be > 0"):
        LoopConfig(clip_norm=0)
    with pytest.raises(ConfigError, match="need --engine ray"):
        TorchOptions(workers=2)
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        TorchOptions(precision="int4")  # type: ignore[arg-type]


def test_one_cycle_rises_to_lr_then_anneals() -> None:
    config = LoopConfig(max_epochs=20, batch_size=16, lr=1e-2, patience=100, schedule="one-cycle")
    lrs = [
        h.lr for h in fit_torch(_net(), _mse, _problem(), config=config, seed=0, deadline=math.inf)
    ]
    peak = int(np.argmax(lrs))
    assert 0 < peak < len(lrs) - 1
    assert max(lrs) == pytest.approx(config.lr, rel=0.05)
    assert lrs[-1] < 1e-3 * config.lr  # one-cycle ends far below where it started
    assert lrs[0] < 0.5 * config.lr


def test_plateau_halves_the_rate_when_the_monitor_stalls() -> None:
    # the overfitting problem: validation loss stops improving within a few epochs
    # patience 6 for early stopping, so 2 for the plateau: the rate halves before the run stops
    config = LoopConfig(max_epochs=40, batch_size=16, lr=1e-2, patience=6, schedule="plateau")
    history = fit_torch(_net(), _mse, _problem(), config=config, seed=0, deadline=math.inf)
    lrs = sorted({h.lr for h in history}, reverse=True)
    assert lrs[0] == pytest.approx(config.lr)
    assert len(lrs) >= 2 and lrs[1] == pytest.approx(config.lr / 2)
    constant = LoopConfig(max_epochs=5, batch_size=16, lr=1e-2, schedule="constant")
    assert {h.lr for h in fit_torch(_net(), _mse, _problem(), config=constant, seed=0,
                                    deadline=math.inf)} == {1e-2}  # fmt: skip


def test_gradients_are_clipped_before_every_step() -> None:
    seen: list[float] = []

    def norm_at_step(optimizer: torch.optim.Optimizer, *_: object) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(
            float(
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            )
        )

    hook = register_optimizer_step_pre_hook(norm_at_step)
    try:
        config = LoopConfig(max_epochs=2, batch_size=16, lr=1e-2, clip_norm=0.05)
        fit_torch(_net(), _mse, _problem(), config=config, seed=0, deadline=math.inf)
        clipped = list(seen)
        seen.clear()
        fit_torch(_net(), _mse, _problem(), config=LoopConfig(max_epochs=2, batch_size=16),
                  seed=0, deadline=math.inf)  # fmt: skip
    finally:
        hook.remove()
    assert clipped and max(clipped) <= 0.05 * 1.0001
    assert max(seen) > 0.05  # unclipped, the gradients are larger: the clip did something


def _classification(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.7, size=600) > 0).astype(np.int64)
    return x[:400], y[:400], x[400:], y[400:]


def test_mlp_stops_on_a_chosen_metric_and_keeps_its_best_epoch() -> None:
    x, y, xv, yv = _classification()
    ctx = FitContext(task="classification", n_classes=2, seed=0, deadline=math.inf)
    mlp = MLP(hidden=32, max_epochs=60, patience=4, monitor="roc_auc", batch_size=32).fit(
        x, y, xv, yv, ctx
    )
    aucs = [h.metrics["roc_auc"] for h in mlp.history_]
    best = int(np.argmax(aucs))
    assert len(mlp.history_) == best + 1 + 4
    assert mlp.describe()["best_epoch"] == best + 1
    assert {"accuracy", "log_loss", "f1_macro", "roc_auc"} <= set(mlp.history_[0].metrics)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(yv, mlp.predict(xv)[:, 1]) == pytest.approx(aucs[best], abs=1e-4)
    with pytest.raises(
        ConfigError, match="cannot monitor 'r2' for classification: choose val_loss, accuracy"
    ):
        MLP(monitor="r2").fit(x, y, xv, yv, ctx)


def test_bf16_autocast_on_cpu_trains_and_fp16_needs_a_gpu() -> None:
    hw = resolve_hardware(TorchOptions(device="cpu", precision="bf16"))
    assert hw == Hardware(torch.device("cpu"), "bf16")
    config = LoopConfig(max_epochs=15, batch_size=16, lr=1e-2, patience=100)
    data = _problem()
    full = fit_torch(_net(), _mse, data, config=config, seed=0, deadline=math.inf)
    half = fit_torch(_net(), _mse, data, config=config, seed=0, deadline=math.inf, hardware=hw)
    # bf16 keeps 8 bits of mantissa: close to fp32, not equal to it
    assert half[-1].train_loss != full[-1].train_loss
    assert half[-1].train_loss == pytest.approx(full[-1].train_loss, rel=0.15)
    assert half[-1].train_loss < 0.6 * half[0].train_loss  # it learned
    with pytest.raises(ConfigError, match="fp16 training needs a CUDA GPU"):
        resolve_hardware(TorchOptions(device="cpu", precision="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            resolve_hardware(TorchOptions(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_trains_on_the_gpu(precision: str) -> None:
    hw = resolve_hardware(TorchOptions(device="cuda", precision=precision))  # type: ignore[arg-type]
    net = _net().to(hw.device)
    config = LoopConfig(max_epochs=15, batch_size=16, lr=1e-2, patience=100)
    history = fit_torch(
        net, _mse, _problem(), config=config, seed=0, deadline=math.inf, hardware=hw
    )
    assert history[-1].train_loss < 0.6 * history[0].train_loss
    assert next(net.parameters()).device.type == "cuda"
