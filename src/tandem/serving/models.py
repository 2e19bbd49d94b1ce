"""Served models: a loaded, warmed version (:class:`Runner`) behind a name that may move.

A :class:`ServedModel` serves one registry reference. ``NAME:V`` is pinned; ``NAME@ALIAS``
and ``NAME`` (the newest) are followed: :meth:`ServedModel.refresh` asks the registry what the
reference means now, and when it names another version it loads and warms that version in a
thread while the current one keeps answering, switches with one assignment (requests already
queued finish on the old runner), then drains and closes the old one. No request fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tandem.bundle import load_bundle
from tandem.inference.predictor import Predictor
from tandem.monitoring.predictions import Layout
from tandem.registry import ModelVersion, Registry
from tandem.registry.refs import parse_ref
from tandem.serving.batcher import Batcher, BatcherConfig, Outputs
from tandem.serving.oip import model_metadata

__all__ = ["Runner", "ServedModel", "load_runner"]

log = logging.getLogger("tandem.serving")

#: seconds before a version that failed to load is tried again
RETRY_FAILED_S = 30.0
#: warm-up batch sizes; each runs five times and the fastest later run seeds the cost model
WARMUP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: seconds of warm-up runs at one size after which larger sizes are not warmed
WARMUP_SIZE_S = 1.0


@dataclass
class Runner:
    """One loaded version: its Predictor, its batcher, and what the protocols show of it."""

    name: str
    version: int
    predictor: Predictor
    batcher: Batcher
    metadata: dict[str, Any]
    output_columns: list[str]
    input_names: list[str]
    text_columns: list[str]
    #: the input column of an image model (its requests may be the raw image), else None
    image_column: str | None = None
    loaded_in_s: float = 0.0
    #: how its rows go into the prediction log (None: not logged)
    log_layout: Layout | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def load_runner(
    version: ModelVersion,
    config: BatcherConfig,
    *,
    threads: int | None = 1,
    on_batch: Callable[[int, float], None] | None = None,
) -> Runner:
    """Load, verify and warm ``version`` (blocking: call it in a thread)."""
    started = time.perf_counter()
    bundle = load_bundle(version.path, expected_digest=version.digest)
    predictor = Predictor(bundle, threads=threads, spin=False)

    def compute(feed: Any) -> Outputs:
        return predictor.decode(predictor.forward(feed))

    batcher = Batcher(compute, config, name=version.name, on_batch=on_batch)
    _warm(predictor, batcher, compute)
    manifest = predictor.manifest
    return Runner(
        name=version.name,
        version=version.version,
        predictor=predictor,
        batcher=batcher,
        metadata=model_metadata(
            version.name,
            version.version,
            manifest.inputs,
            predictor.output_columns,
            manifest.classes,
        ),
        output_columns=list(predictor.output_columns),
        input_names=predictor.input_names,
        text_columns=[c.name for c in manifest.inputs if c.kind == "categorical"],
        image_column=next((c.name for c in manifest.inputs if c.kind == "image"), None),
        loaded_in_s=time.perf_counter() - started,
    )


def _warm(predictor: Predictor, batcher: Batcher, compute: Callable[[Any], Outputs]) -> None:
    """Run every code path once (ONNX Runtime allocates on first use) and fit the cost model."""
    example = predictor.manifest.example_row()
    limit = batcher.config.max_batch or batcher.config.max_batch_limit
    for n in WARMUP_SIZES:
        if n > limit:
            break
        feed = predictor.encode(predictor.preprocess({k: [v] * n for k, v in example.items()}))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            compute(feed)
            times.append(time.perf_counter() - t0)
        # the fastest of the runs after the first: noise on a shared machine only adds time
        batcher.observe(n, min(times[1:]))
        if sum(times) > WARMUP_SIZE_S:
            # a heavy model (a text encoder: 0.1 s a text here) would warm for minutes up
            # to 256 rows; the sizes measured so far fit the cost model's line
            break


@dataclass
class ServedModel:
    """What one reference on the command line serves."""

    ref: str
    registry: Registry
    config: BatcherConfig
    threads: int | None = 1
    on_batch: Callable[[str], Callable[[int, float], None]] | None = None
    on_swap: Callable[[Runner], None] | None = None
    #: awaited with the old runner once the new one is ready, before the switch (the cost
    #: ledger closes the old version's interval there)
    before_swap: Callable[[Runner], Awaitable[None]] | None = None
    runner: Runner | None = None
    _swapping: bool = field(default=False, repr=False)
    #: a version that would not load, and when to try it again
    _failed: tuple[int, float] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return parse_ref(self.ref).name

    @property
    def follows(self) -> bool:
        """True unless the reference pins a version number."""
        return parse_ref(self.ref).version is None

    def resolve(self) -> ModelVersion:
        return self.registry.get(self.ref)

    async def load(self, version: ModelVersion | None = None) -> Runner:
        """Load (in a thread) and switch to ``version`` (default: what the reference names)."""
        loop = asyncio.get_running_loop()
        if version is None:
            version = await loop.run_in_executor(None, self.resolve)
        hook = self.on_batch(self.name) if self.on_batch is not None else None
        runner = await loop.run_in_executor(
            None, lambda: load_runner(version, self.config, threads=self.threads, on_batch=hook)
        )
        if self.runner is not None and self.before_swap is not None:
            await self.before_swap(self.runner)
        old, self.runner = self.runner, runner
        if self.on_swap is not None:
            self.on_swap(runner)
        if old is not None:
            log.info(
                "%s: now serving %s (was %s); draining the old version",
                self.ref,
                runner.ref,
                old.ref,
            )
            await old.batcher.drain()
        return runner

    async def refresh(self) -> bool:
        """Follow the reference: switch if it names another version now.

        Returns False when it could not settle (the registry could not answer, or the version
        it names failed to load, which is tried again after :data:`RETRY_FAILED_S`), True when
        the served version is what the reference names.
        """
        if not self.follows or self._swapping:
            return True
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(None, self.resolve)
        except Exception as exc:  # alias deleted, registry unreachable: keep serving
            log.warning("%s: cannot resolve (%s); still serving the loaded version", self.ref, exc)
            return False
        if self.runner is not None and version.version == self.runner.version:
            return True
        failed = self._failed
        if failed is not None and failed[0] == version.version and time.monotonic() < failed[1]:
            return False
        self._swapping = True
        try:
            await self.load(version)
        except Exception as exc:
            self._failed = (version.version, time.monotonic() + RETRY_FAILED_S)
            log.error(
                "%s: version %d failed to load (%s); still serving the old one, retrying in %.0f s",
                self.ref, version.version, exc, RETRY_FAILED_S,
            )  # fmt: skip
            return False
        finally:
            self._swapping = False
        return True
