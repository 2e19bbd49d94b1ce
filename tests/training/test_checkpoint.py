"""Checkpoints: an interrupted loop, resumed, ends with the weights of an uninterrupted one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tandem.errors import ConfigError, TrainingError
from tandem.training.checkpoint import Checkpointer
from tandem.training.loop import LoopConfig, fit_torch

CONFIG = LoopConfig(max_epochs=6, batch_size=16, lr=1e-2, patience=3, schedule="one-cycle")
STEPS = 6 * 4  # 60 training rows in batches of 16


class CrashError(Exception):
    """Stands for the process dying at a step."""


def _data() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    y = (x[:, 0] + rng.normal(scale=1.0, size=80)).astype(np.float32)
    return x[:60], y[:60], x[60:], y[60:]


def _net() -> nn.Module:
    torch.manual_seed(0)  # dropout draws from the global generator: the checkpoint must keep it
    return nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 1))


def _loss(crash_at: int | None = None) -> object:
    calls = {"train": 0}

    def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] == crash_at:
                raise CrashError
        return nn.functional.mse_loss(pred.squeeze(1), target)

    return mse


def _fit(net: nn.Module, loss: object, ckpt: Checkpointer | None) -> list[object]:
    return fit_torch(net, loss, _data(), config=CONFIG, seed=1, deadline=math.inf,  # type: ignore[arg-type]
                     checkpoint=ckpt)  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[nn.Module, list[object]]:
    net = _net()
    return net, _fit(net, _loss(), None)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(crash_at=st.integers(2, STEPS), every=st.integers(1, 7))
def test_resume_after_a_crash_at_any_step_gives_the_same_weights(
    uninterrupted: tuple[nn.Module, list[object]], tmp_path_factory: pytest.TempPathFactory,
    crash_at: int, every: int,
) -> None:  # fmt: skip
    folder = tmp_path_factory.mktemp("ckpt")
    with pytest.raises(CrashError):
        _fit(_net(), _loss(crash_at), Checkpointer(folder, every_steps=every, every_s=None))
    if crash_at <= every:
        assert not (folder / "checkpoint.pt").exists()  # crashed before the first save
    resumed = _net()
    history = _fit(
        resumed, _loss(), Checkpointer(folder, every_steps=every, every_s=None, resume=True)
    )
    reference, reference_history = uninterrupted
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [h.val_loss for h in history] == [h.val_loss for h in reference_history]  # type: ignore[attr-defined]


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    Checkpointer(tmp_path, key="run-a").save({"x": torch.zeros(1)})
    with pytest.raises(TrainingError, match="belongs to another run"):
        Checkpointer(tmp_path, key="run-b", resume=True).load()
    assert Checkpointer(tmp_path, key="run-a").load() is None  # not resuming: ignored
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(TrainingError, match="cannot be read .*delete it to start over"):
        Checkpointer(tmp_path, key="run-a", resume=True).load()


def test_a_save_replaces_the_last_one_whole(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, every_steps=2, every_s=None, resume=True)
    ckpt.save({"step": 1})
    ckpt.save({"step": 2})
    assert ckpt.load() == {"step": 2, "key": ""}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp left
    assert [ckpt.due(s) for s in (1, 2, 3, 4)] == [False, True, False, True]
    with pytest.raises(ConfigError, match="every N steps needs N >= 1"):
        Checkpointer(tmp_path, every_steps=0)
