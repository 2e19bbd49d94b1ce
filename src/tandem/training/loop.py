"""The PyTorch training loop.

Mini-batches with AdamW; a learning-rate schedule (warmup + cosine, one-cycle,
reduce-on-plateau or constant); optional gradient clipping; mixed precision (bf16 autocast on
CPU, fp16 with gradient scaling or bf16 on CUDA); validation every epoch with the family's
metrics; early stopping on a chosen validation metric with patience, and the best weights
restored at the end; checkpoints every N steps or seconds from which a killed run resumes to
the same final weights (see :mod:`tandem.training.checkpoint`); and, inside a Ray Train worker,
data-parallel training under DDP (see :mod:`tandem.training.distributed`).

Which device and precision a run uses is decided in one place, :func:`resolve_hardware`, which
refuses impossible combinations (fp16 without a GPU, CUDA where there is none) before any work.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from tandem.errors import ConfigError
from tandem.training.checkpoint import Checkpointer, rng_state, set_rng_state

__all__ = [
    "EpochRecord",
    "Hardware",
    "LoopConfig",
    "TorchOptions",
    "best_epoch",
    "fit_torch",
    "resolve_hardware",
    "run_summary",
]

Schedule = Literal["warmup-cosine", "one-cycle", "plateau", "constant"]
SCHEDULES: tuple[str, ...] = ("warmup-cosine", "one-cycle", "plateau", "constant")
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: monitored values that are better when lower; every other metric is better when higher
LOWER_IS_BETTER = frozenset({"val_loss", "log_loss", "rmse", "mae"})


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Hyperparameters of :func:`fit_torch`; the defaults suit tabular data of 1k–1M rows.

    ``monitor`` is what early stopping and reduce-on-plateau watch: ``val_loss`` or one of the
    family's validation metrics (``accuracy``, ``roc_auc``, ``r2``, ``rmse``, ...).
    ``clip_norm`` clips the gradients' global L2 norm (None: no clipping)."""

    max_epochs: int = 200
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: Schedule = "warmup-cosine"
    warmup_epochs: int = 1
    patience: int = 12
    clip_norm: float | None = None
    monitor: str = "val_loss"

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0; got {self.warmup_epochs}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0; got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule '{self.schedule}': choose {', '.join(SCHEDULES)}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0 (or unset); got {self.clip_norm}")

    @property
    def lower_is_better(self) -> bool:
        return self.monitor in LOWER_IS_BETTER


@dataclass(frozen=True, kw_only=True)
class TorchOptions:
    """How a torch family trains, as opposed to what it learns: where, in which precision,
    on how many workers. ``engine="ray"`` runs the loop under Ray Train with ``workers``
    data-parallel processes (local Ray, or the cluster at ``ray_address``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision = "fp32"
    engine: Literal["local", "ray"] = "local"
    workers: int = 1
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device '{self.device}': choose auto, cpu or cuda")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision '{self.precision}': choose {', '.join(PRECISIONS)}"
            )
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"unknown engine '{self.engine}': choose local or ray")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1; got {self.workers}")
        if self.engine == "local" and (self.workers > 1 or self.ray_address):
            raise ConfigError(
                "--workers and --ray-address need --engine ray: the local engine is one process"
            )


@dataclass(frozen=True)
class Hardware:
    """The device and precision a loop runs with (from :func:`resolve_hardware`)."""

    device: torch.device
    precision: Precision

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        # fp16's narrow exponent underflows small gradients; bf16 has fp32's range
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def resolve_hardware(options: TorchOptions, device: torch.device | None = None) -> Hardware:
    """The one place that picks device and precision; refuses what cannot run here.

    ``device`` overrides the choice (a Ray Train worker is handed its device)."""
    if device is None:
        has_cuda = torch.cuda.is_available()
        if options.device == "cuda" and not has_cuda:
            raise ConfigError("--device cuda: no CUDA GPU is visible here; use --device cpu")
        device = torch.device("cuda" if options.device != "cpu" and has_cuda else "cpu")
    if device.type == "cpu" and options.precision == "fp16":
        raise ConfigError(
            "fp16 training needs a CUDA GPU (CPU autocast to fp16 is slow and unscaled); "
            "use --precision bf16 on CPU"
        )
    return Hardware(device, options.precision)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: losses, the validation metrics, the learning rate at its end, its seconds."""

    epoch: int
    train_loss: float
    val_loss: float
    lr: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def value(self, monitor: str) -> float:
        return self.val_loss if monitor == "val_loss" else self.metrics[monitor]


def best_epoch(history: Sequence[EpochRecord], config: LoopConfig) -> int | None:
    """The epoch (from 1) whose weights a run kept: the best of ``config.monitor`` (None when
    no epoch ran, e.g. a pruned network kept without fine-tuning)."""
    values = [h.value(config.monitor) for h in history]
    if not values:
        return None
    return int(np.argmin(values) if config.lower_is_better else np.argmax(values)) + 1


def run_summary(history: Sequence[EpochRecord], config: LoopConfig) -> dict[str, Any]:
    """How a loop ran, for a family's ``describe``: its settings, the epochs run, the one kept,
    and every epoch's record (``tandem models curves`` draws them)."""
    return {
        "loop": asdict(config),
        "epochs": len(history),
        "best_epoch": best_epoch(history, config),
        "history": [h.to_json() for h in history],
    }


def _warmup_cosine(cfg: LoopConfig, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = max(1, cfg.warmup_epochs * steps_per_epoch)
    total = max(warmup + 1, cfg.max_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / (total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _scheduler(cfg: LoopConfig, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """The schedule; stepped every batch, except reduce-on-plateau, stepped every epoch."""
    if cfg.schedule == "one-cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=cfg.max_epochs * steps
        )
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min" if cfg.lower_is_better else "max",
            factor=0.5,
            patience=max(1, cfg.patience // 3),
        )
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg, steps))


@dataclass
class _State:
    """What the loop carries from step to step; saved whole in a checkpoint."""

    epoch: int = 0  # the epoch under way, from 0
    step: int = 0  # optimizer steps done in it
    global_step: int = 0
    epoch_loss: float = 0.0  # sum of batch loss × batch rows in this epoch so far
    epoch_rows: int = 0
    epoch_seconds: float = 0.0  # time spent in this epoch before a resume
    shuffle_state: torch.Tensor | None = None  # the shuffling generator at the epoch's start
    best: float = math.nan
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    since_best: int = 0
    history: list[EpochRecord] = field(default_factory=list)


def _batches(
    order: torch.Tensor, batch_size: int, shard: tuple[int, int]
) -> Iterator[torch.Tensor]:
    """This worker's mini-batches of one epoch's order: every worker walks the same
    permutation, takes every ``world``-th row from ``rank``, and gets as many rows as the
    others (DDP steps in lock-step), with ``batch_size`` split among the workers."""
    rank, world = shard
    if world > 1:
        order = order[rank::world][: len(order) // world]
        batch_size = max(1, math.ceil(batch_size / world))
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def fit_torch(
    module: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    config: LoopConfig,
    seed: int,
    deadline: float,
    on_epoch: Callable[..., None] | None = None,
    evaluate: Callable[[np.ndarray], dict[str, float]] | None = None,
    hardware: Hardware | None = None,
    checkpoint: Checkpointer | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[EpochRecord]:
    """Train ``module`` in place and leave it holding the weights of its best epoch.

    Args:
        module: maps a float32 batch (n, n_features) to predictions for ``loss_fn``.
        loss_fn: (predictions, targets) -> scalar loss.
        data: X_train, y_train, X_val, y_val as numpy arrays (X float, y as the loss expects).
        config: hyperparameters.
        seed: seeds the initial state and the batch order; the same seed gives the same weights.
        deadline: ``time.monotonic()`` after which no new epoch starts.
        on_epoch: called after each epoch as ``on_epoch(epoch, train_loss=..., val_loss=...,
            lr=..., <metric>=...)``; in a data-parallel run, by every worker.
        evaluate: validation metrics from the module's float32 outputs on X_val, shape
            (n_val, outputs); needed when ``config.monitor`` is not ``val_loss``.
        hardware: device and precision (default: CPU, fp32).
        checkpoint: when and where to save, and whether to resume (default: no checkpoints).
        shard: (rank, world) of this worker when ``module`` is wrapped in DDP.

    Returns:
        One record per epoch run (including those run before a resume).
    """
    hw = hardware or Hardware(torch.device("cpu"), "fp32")
    net = module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
    torch.manual_seed(seed)
    X, y, X_val, y_val = (torch.from_numpy(np.ascontiguousarray(a)).to(hw.device) for a in data)
    X, X_val = X.float(), X_val.float()
    generator = torch.Generator().manual_seed(seed)
    steps = len(list(_batches(torch.arange(len(X)), config.batch_size, shard))) or 1
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = _scheduler(config, optimizer, steps)
    per_epoch = config.schedule == "plateau"
    scaler = hw.scaler()
    state = _State(best=math.inf if config.lower_is_better else -math.inf)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        generator.set_state(saved["generator"])
        set_rng_state(saved["rng"])
        state = _State(**saved["loop"])
        state.history = [EpochRecord(**h) for h in saved["loop"]["history"]]

    def save() -> None:
        assert checkpoint is not None
        loop = asdict(state)
        loop["history"] = [h.to_json() for h in state.history]
        checkpoint.save({
            "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "generator": generator.get_state(), "rng": rng_state(), "loop": loop,
        })  # fmt: skip

    if not state.best_state:
        state.best_state = copy.deepcopy(net.state_dict())
    while state.epoch < config.max_epochs and not _together(
        _stopped(state, config, deadline), shard, hw
    ):
        started = time.monotonic() - state.epoch_seconds
        if state.step == 0:
            state.shuffle_state = generator.get_state()
        else:  # resumed mid-epoch: draw the same order again, then skip what was done
            assert state.shuffle_state is not None
            generator.set_state(state.shuffle_state)
        order = torch.randperm(len(X), generator=generator).to(hw.device)
        module.train()
        for i, batch in enumerate(_batches(order, config.batch_size, shard)):
            if i < state.step:
                continue
            optimizer.zero_grad(set_to_none=True)
            with hw.autocast():
                loss = loss_fn(module(X[batch]), y[batch])
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            if config.clip_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.clip_norm)
            scaler.step(optimizer)
            scaler.update()
            if not per_epoch:
                scheduler.step()
            state.epoch_loss += loss.item() * len(batch)
            state.epoch_rows += len(batch)
            state.step += 1
            state.global_step += 1
            if checkpoint is not None and checkpoint.due(state.global_step):
                state.epoch_seconds = time.monotonic() - started
                save()
        module.eval()
        with torch.no_grad(), hw.autocast():
            outputs = module(X_val).float()
            val_loss = float(loss_fn(outputs, y_val))
        metrics = evaluate(outputs.cpu().numpy()) if evaluate is not None else {}
        record = EpochRecord(
            state.epoch + 1,
            state.epoch_loss / max(1, state.epoch_rows),
            val_loss,
            float(optimizer.param_groups[0]["lr"]),
            time.monotonic() - started,
            metrics,
        )
        _end_epoch(state, record, config, net)
        if per_epoch:
            scheduler.step(record.value(config.monitor))
        if on_epoch is not None:
            on_epoch(record.epoch, train_loss=record.train_loss, val_loss=val_loss,
                     lr=record.lr, **metrics)  # fmt: skip
        if checkpoint is not None and checkpoint.due_by_time():
            save()
    net.load_state_dict(state.best_state)
    module.eval()
    return state.history


def _end_epoch(
    state: _State, record: EpochRecord, config: LoopConfig, net: torch.nn.Module
) -> None:
    """Keep the record, the best weights and the early-stopping count; start the next epoch."""
    if config.monitor != "val_loss" and config.monitor not in record.metrics:
        raise ConfigError(
            f"cannot monitor '{config.monitor}': the validation metrics are "
            f"{', '.join(['val_loss', *record.metrics])}"
        )
    value = record.value(config.monitor)
    better = value < state.best - 1e-6 if config.lower_is_better else value > state.best + 1e-6
    if better:
        state.best, state.best_state, state.since_best = value, copy.deepcopy(net.state_dict()), 0
    else:
        state.since_best += 1
    state.history.append(record)
    state.epoch += 1
    state.step = 0
    state.epoch_loss = 0.0
    state.epoch_rows = 0
    state.epoch_seconds = 0.0


def _together(flag: bool, shard: tuple[int, int], hw: Hardware) -> bool:
    """``flag`` if any worker raised it: data-parallel workers must stop at the same step, and
    their clocks (the deadline) need not agree."""
    if shard[1] == 1:
        return flag
    vote = torch.tensor([float(flag)], device=hw.device)
    torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX)
    return bool(vote.item())


def _stopped(state: _State, config: LoopConfig, deadline: float) -> bool:
    """Early stopping (no better epoch for ``patience`` epochs) or out of time; a run resumed
    in the middle of an epoch always finishes that epoch."""
    if state.step:
        return False
    return state.since_best >= config.patience or (
        bool(state.history) and time.monotonic() > deadline
    )
