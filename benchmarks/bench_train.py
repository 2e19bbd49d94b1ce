"""Training loop overhead: tandem's ``fit_torch`` against a hand-written PyTorch loop, and
against PyTorch Lightning when it is installed, on the same model and data, in one process.

Claim under test (issue goal): an epoch of our loop takes at most 5 % longer than the raw
loop's.

Model: W1, tandem's MLP (32 → 256 → ReLU → dropout → 256 → ReLU → dropout → 2). Data:
``synthetic_classification``, 32 float features, ``--rows`` training rows (default 100,000)
and a fifth as many validation rows. Every contender does the same work an epoch: a fresh
permutation, mini-batches of 256, AdamW, a warmup + cosine learning-rate factor stepped every
batch, then a validation pass (loss and accuracy) and a copy of the weights when validation
loss improves.

  raw        the loop as a careful user writes it: ``randperm`` + index slicing, no framework
  ours       ``fit_torch`` as ``tandem train`` runs it: the family's validation metrics
             (accuracy, log loss, F1, ROC AUC), early-stopping bookkeeping, and checkpoints
             every 60 s (the default; none falls inside a short epoch)
  ours+ckpt  the same, saving a full checkpoint every 100 steps (what resumable runs cost)
  ours-bf16  (``--bf16``) the same with bf16 autocast; on a CPU without native bf16
             (AVX-512 BF16, AMX) it is emulated: ~60× slower here, so not in the default run
  lightning  ``lightning.Trainer`` on the CPU, no logger, progress bar or checkpointing, fed
             by a DataLoader of whole batches (a BatchSampler over a TensorDataset, so it
             does not collate row by row)

Each round runs every contender for ``--epochs`` epochs, in a rotating order; an epoch's
time is train + validation, the first epoch of each run is dropped (warm-up). Reported:
median epoch seconds per contender, and the paired ratio to raw (median over rounds of
the round's median epoch against raw's in the same round).

    PYTHONPATH=src python benchmarks/bench_train.py [--rounds 5] [--epochs 4] [--rows 100000]

(~5 min with the defaults.) Results also go to ``benchmarks/out/bench_train.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from _common import machine, median, paired_ratio, synthetic_classification, text_table, write_json
from tandem.models.mlp import evaluator
from tandem.training.checkpoint import Checkpointer
from tandem.training.loop import Hardware, LoopConfig, _warmup_cosine, fit_torch

BATCH, LR, WD, SEED = 256, 3e-3, 1e-4, 0
Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def w1() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 2),
    )  # fmt: skip


def raw_loop(data: Data, epochs: int) -> tuple[list[float], float]:
    """The hand-written baseline; returns epoch seconds and the last validation loss."""
    net, loss_fn = w1(), nn.CrossEntropyLoss()
    torch.manual_seed(SEED)
    X, y, Xv, yv = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    X, Xv = X.float(), Xv.float()
    gen = torch.Generator().manual_seed(SEED)
    steps = math.ceil(len(X) / BATCH)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD)
    config = LoopConfig(max_epochs=epochs, batch_size=BATCH, lr=LR, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(config, steps))
    best, best_state, seconds, val = math.inf, copy.deepcopy(net.state_dict()), [], math.nan
    for _ in range(epochs):
        started = time.perf_counter()
        net.train()
        order = torch.randperm(len(X), generator=gen)
        total = 0.0
        for i in range(steps):
            batch = order[i * BATCH : (i + 1) * BATCH]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(X[batch]), y[batch])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        net.eval()
        with torch.no_grad():
            out = net(Xv)
            val = float(loss_fn(out, yv))
            _accuracy = float((out.argmax(1) == yv).float().mean())
        if val < best:
            best, best_state = val, copy.deepcopy(net.state_dict())
        seconds.append(time.perf_counter() - started)
    net.load_state_dict(best_state)
    return seconds, val


def ours(data: Data, epochs: int, *, every_steps: int | None = None,
         precision: str = "fp32") -> tuple[list[float], float]:  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        ckpt = Checkpointer(Path(folder), every_steps=every_steps, every_s=60.0)
        history = fit_torch(
            w1(), nn.CrossEntropyLoss(), data,
            config=LoopConfig(max_epochs=epochs, batch_size=BATCH, lr=LR, weight_decay=WD,
                              patience=epochs + 1),
            seed=SEED, deadline=math.inf, evaluate=evaluator("classification", data[3], 0.0, 1.0),
            hardware=Hardware(torch.device("cpu"), precision),  # type: ignore[arg-type]
            checkpoint=ckpt,
        )  # fmt: skip
    return [h.seconds for h in history], history[-1].val_loss


def lightning_loop(data: Data, epochs: int) -> tuple[list[float], float]:
    import lightning
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    X, y, Xv, yv = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    train_set, val_set = TensorDataset(X.float(), y), TensorDataset(Xv.float(), yv)
    steps = math.ceil(len(X) / BATCH)
    config = LoopConfig(max_epochs=epochs, batch_size=BATCH, lr=LR, weight_decay=WD)

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.loss = w1(), nn.CrossEntropyLoss()
            self.best, self.best_state, self.last_val = math.inf, None, math.nan

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, t = batch
            return self.loss(self.net(x), t)  # type: ignore[no-any-return]

        def validation_step(self, batch: Any, _: int) -> None:
            x, t = batch
            out = self.net(x)
            self.last_val = float(self.loss(out, t))
            _accuracy = float((out.argmax(1) == t).float().mean())
            if self.last_val < self.best:
                self.best, self.best_state = self.last_val, copy.deepcopy(self.net.state_dict())

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=WD)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(config, steps))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Timer(lightning.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, *_: Any) -> None:
            self.started = time.perf_counter()

        def on_validation_epoch_end(self, trainer: Any, *_: Any) -> None:
            if not trainer.sanity_checking:
                self.seconds.append(time.perf_counter() - self.started)

    def loader(dataset: Any, batch: int, shuffle: bool) -> DataLoader[Any]:
        sampler: Any = RandomSampler(dataset) if shuffle else range(len(dataset))
        batches = BatchSampler(sampler, batch, drop_last=False)
        # batch_size=None: each sampled index list fetches one whole batch, by slicing
        return DataLoader(dataset, sampler=batches, batch_size=None)

    torch.manual_seed(SEED)
    module, timer = Module(), Timer()
    trainer = lightning.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, loader(train_set, BATCH, True), loader(val_set, len(Xv), False))
    return timer.seconds, module.last_val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")  # Lightning's hints about DataLoader workers

    rng = np.random.default_rng(SEED)
    x, y = synthetic_classification(rng, args.rows + args.rows // 5, 32)
    data: Data = (x[: args.rows], y[: args.rows], x[args.rows :], y[args.rows :])
    contenders: dict[str, Callable[[Data, int], tuple[list[float], float]]] = {
        "raw": raw_loop,
        "ours": ours,
        "ours+ckpt": lambda d, e: ours(d, e, every_steps=100),
    }
    if args.bf16:
        contenders["ours-bf16"] = lambda d, e: ours(d, e, precision="bf16")
    try:
        import lightning

        contenders["lightning"] = lightning_loop
        lightning_version = lightning.__version__
        for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.ERROR)  # after import: it sets its own
    except ImportError:
        lightning_version = None
        print("lightning is not installed: its column is left out (make bench installs it)")
    print(f"{args.rows:,} training rows, batch {BATCH}, {args.epochs} epochs a run, "
          f"{args.rounds} rounds; torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    per_round: dict[str, list[float]] = {k: [] for k in contenders}
    last_val: dict[str, float] = {}
    names = list(contenders)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds, val = contenders[name](data, args.epochs)
            per_round[name].append(median(seconds[1:] or seconds))
            last_val[name] = val
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} {per_round[k][-1]:.3f}s" for k in names))  # fmt: skip
        sys.stdout.flush()
    rows = []
    for name in names:
        ratio = paired_ratio(per_round[name], per_round["raw"])
        rows.append([name, f"{median(per_round[name]):.3f}", f"{ratio:.3f}",
                     f"{args.rows / median(per_round[name]):,.0f}", f"{last_val[name]:.4f}"])  # fmt: skip
    print()
    print(text_table(["loop", "epoch s (median)", "× raw", "rows/s", "last val loss"], rows))
    overhead = paired_ratio(per_round["ours"], per_round["raw"]) - 1
    print(f"\ngoal: our epoch ≤ 5 % over raw: measured {100 * overhead:+.1f} % "
          f"({'met' if overhead <= 0.05 else 'MISSED'})")  # fmt: skip
    path = write_json("bench_train", {
        "machine": machine(), "args": vars(args), "lightning": lightning_version,
        "epoch_seconds_per_round": per_round, "last_val_loss": last_val, "overhead": overhead,
    })  # fmt: skip
    print(f"results in {path}")


if __name__ == "__main__":
    main()
