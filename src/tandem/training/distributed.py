"""Data-parallel training on Ray Train: the same loop, in N worker processes under DDP.

``tandem train --engine ray --workers N`` hands :func:`tandem.training.loop.fit_torch` to a
Ray Train ``TorchTrainer``: Ray starts N workers and a torch process group among them (gloo
on CPU, NCCL on GPU); each worker wraps the network in DistributedDataParallel and walks
its share of every epoch's permutation (the same permutation in every worker, so together
they see each row once per epoch), with the batch size split among them, so an epoch takes
the same number of optimizer steps on the same global batches as one process. Gradients are
averaged at every step, so the replicas stay identical; each evaluates the whole validation
split, and they agree to stop (early stopping, deadline) together.

Rank 0 hands the best weights and the epoch history back through a Ray Train checkpoint in a
temporary folder, removed afterwards, with the CPU seconds all workers spent (summed over the
process group): the workers are not the driver's children, so the run's meter is told of
them (:func:`tandem.ledger.meter.add_cpu_elsewhere`) and the ledger prices them. Without ``--ray-address`` a local Ray instance is
started for the run and stopped after it; with one, the run joins that cluster, whose
workers on other machines need a shared ``storage_path`` (Ray's rule for multi-node
checkpoints), given by ``TANDEM_RAY_STORAGE``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.errors import ConfigError, TrainingError
from tandem.ledger.meter import add_cpu_elsewhere
from tandem.training.loop import EpochRecord, LoopConfig, TorchOptions, fit_torch, resolve_hardware

__all__ = ["fit_ray"]

_STATE = "model.pt"


def fit_ray(
    module: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    config: LoopConfig,
    seed: int,
    deadline: float,
    on_epoch: Callable[..., None] | None,
    evaluate: Callable[[np.ndarray], dict[str, float]] | None,
    options: TorchOptions,
) -> list[EpochRecord]:
    """:func:`~tandem.training.loop.fit_torch` on ``options.workers`` Ray Train workers;
    ``module`` ends holding the best weights, as with the local loop. ``deadline`` is this
    machine's ``time.monotonic()``; it is passed on as seconds left."""
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as exc:
        raise ConfigError("--engine ray needs Ray Train: pip install 'tandem[ray]'") from exc

    use_gpu = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(
                address=options.ray_address,
                num_cpus=None if options.ray_address else options.workers + 1,
                include_dashboard=False,
                log_to_driver=False,
            )
        except Exception as exc:  # a wrong address, a cluster that is down
            raise ConfigError(
                f"cannot reach Ray at {options.ray_address or 'a new local instance'}: {exc}"
            ) from exc
    storage = os.environ.get("TANDEM_RAY_STORAGE") or tempfile.mkdtemp(prefix="tandem-ray-")
    try:
        job = {
            "module": module, "loss_fn": loss_fn, "data": ray.put(data), "config": config,
            "seed": seed, "seconds": deadline - time.monotonic(), "evaluate": evaluate,
            "options": options,
        }  # fmt: skip
        trainer = TorchTrainer(
            _worker,
            train_loop_config=job,
            scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=use_gpu),
            run_config=RunConfig(storage_path=storage, name=f"tandem-{os.getpid()}"),
        )
        try:
            result = trainer.fit()
        except Exception as exc:
            raise TrainingError(f"distributed training on Ray failed: {exc}") from exc
        if result.checkpoint is None:
            raise TrainingError("distributed training on Ray returned no weights")
        with result.checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / _STATE, weights_only=True)
    finally:
        if "TANDEM_RAY_STORAGE" not in os.environ:
            shutil.rmtree(storage, ignore_errors=True)
        if started_here:
            ray.shutdown()
    module.load_state_dict(saved["model"])
    add_cpu_elsewhere(float(saved["cpu_seconds"]), f"{options.workers} Ray Train workers")
    history = [EpochRecord(**h) for h in saved["history"]]
    if on_epoch is not None:
        for h in history:
            on_epoch(h.epoch, train_loss=h.train_loss, val_loss=h.val_loss, lr=h.lr,
                     wall_s=h.seconds, **h.metrics)  # fmt: skip
    return history


def _worker(job: dict[str, Any]) -> None:
    """One Ray Train worker: the loop on its shard, under DDP."""
    import ray
    import ray.train
    import ray.train.torch

    cpu_started = time.process_time()  # this worker process, all its threads
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(1)  # one CPU per worker, as Ray reserved; more would oversubscribe
    module = ray.train.torch.prepare_model(job["module"])
    hardware = resolve_hardware(job["options"], ray.train.torch.get_device())
    history = fit_torch(
        module, job["loss_fn"], ray.get(job["data"]), config=job["config"], seed=job["seed"],
        deadline=time.monotonic() + job["seconds"], evaluate=job["evaluate"],
        hardware=hardware, shard=(rank, world),
    )  # fmt: skip
    net = module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
    # the workers are not the driver's children, so its meter cannot see their CPU: sum it
    spent = torch.tensor([time.process_time() - cpu_started], dtype=torch.float64)
    if world > 1:
        spent = spent.to(hardware.device)
        torch.distributed.all_reduce(spent, op=torch.distributed.ReduceOp.SUM)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            torch.save(
                {"model": {k: v.cpu() for k, v in net.state_dict().items()},
                 "history": [h.to_json() for h in history], "cpu_seconds": float(spent.item())},
                Path(folder) / _STATE,
            )  # fmt: skip
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"epochs": len(history)}, checkpoint=checkpoint)
