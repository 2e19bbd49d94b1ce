"""Checkpoints of a training loop, complete enough that a killed run resumes bit for bit.

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, every random
number generator the loop draws from (torch's global one, which dropout uses, CUDA's, numpy's,
Python's, and the loop's own shuffling generator as it stood at the start of the epoch), the
epoch, the step within the epoch and the running sums of that epoch, the best weights so far
and the early-stopping counters. Restoring model and optimizer alone is not enough: the
learning-rate schedule would restart, dropout would draw other masks and the epoch would be
shuffled anew, and the resumed run would end with other weights.

It is written with ``torch.save`` to a temporary file in the same folder, flushed to disk and
renamed over the last one, so a ``kill -9`` during a write leaves the previous checkpoint
whole; it is read with ``torch.load(weights_only=True)``, which unpickles only tensors and
plain containers, so a checkpoint cannot run code. The loop refuses a checkpoint whose
settings (the run's key) differ from its own: resuming with another learning rate would not be
the same run.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.errors import ConfigError, TrainingError

__all__ = ["Checkpointer", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)

FILE = "checkpoint.pt"


@dataclass
class Checkpointer:
    """When and where a loop saves its state, and whether it starts from the saved one.

    Args:
        folder: where ``checkpoint.pt`` is kept (created on the first save).
        every_steps: save after every this many optimizer steps (None: not by steps).
        every_s: save once this many seconds passed since the last save (None: not by time).
        resume: start from the checkpoint in ``folder`` if there is one.
        key: what identifies the run (data fingerprint, recipe); a checkpoint with another
            key is refused rather than resumed.

    Example:
        >>> ckpt = Checkpointer(Path("/tmp/run"), every_steps=100)  # doctest: +SKIP
    """

    folder: Path
    every_steps: int | None = None
    every_s: float | None = 60.0
    resume: bool = False
    key: str = ""

    def __post_init__(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise ConfigError(f"checkpoint every N steps needs N >= 1; got {self.every_steps}")
        if self.every_s is not None and not self.every_s > 0:
            raise ConfigError(f"checkpoint interval must be > 0 seconds; got {self.every_s}")
        self._last_save = time.monotonic()
        self.saves = 0

    @property
    def path(self) -> Path:
        return self.folder / FILE

    def due(self, step: int) -> bool:
        """Whether to save after global step ``step`` (counted from 1)."""
        if self.every_steps is not None and step % self.every_steps == 0:
            return True
        return self.due_by_time()

    def due_by_time(self) -> bool:
        return self.every_s is not None and time.monotonic() - self._last_save >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (temp file, fsync, rename)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = self.folder / f".{FILE}.{os.getpid()}.tmp"
        try:
            with open(temp, "wb") as f:
                torch.save({**state, "key": self.key}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        finally:
            temp.unlink(missing_ok=True)
        self._last_save = time.monotonic()
        self.saves += 1

    def load(self) -> dict[str, Any] | None:
        """The saved state when resuming and one exists, else None."""
        if not self.resume:
            return None
        if not self.path.exists():
            log.warning(
                "no checkpoint in %s to resume from: starting from the beginning", self.folder
            )
            return None
        try:
            state: dict[str, Any] = torch.load(self.path, weights_only=True)
        except Exception as exc:
            # torch's own message suggests weights_only=False, which would run any code in it
            raise TrainingError(
                f"checkpoint {self.path} cannot be read ({type(exc).__name__}: damaged, or "
                "not a tandem checkpoint); delete it to start over"
            ) from exc
        if state.get("key") != self.key:
            raise TrainingError(
                f"checkpoint {self.path} belongs to another run (other data or settings); "
                "delete it, or resume with the same data and settings"
            )
        loop = state.get("loop", {})
        log.warning("resuming from %s: epoch %s, step %s", self.path, loop.get("epoch", 0) + 1,
                    loop.get("step"))  # fmt: skip
        return state


def rng_state() -> dict[str, Any]:
    """The global generators' states, as tensors and plain values (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            kind,
            torch.from_numpy(np.asarray(keys).astype(np.int64)),
            pos,
            has_gauss,
            cached,
        ],
        "python": [py_version, list(py_internal), py_gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
