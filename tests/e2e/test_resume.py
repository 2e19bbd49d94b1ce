"""`tandem train --resume` after `kill -9`: the same model as a run that was never killed."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from tandem.bundle.manifest import GRAPH
from tests.helpers import TANDEM, cli_env


def _data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=3000) > 0).astype(np.int64)
    pacsv.write_csv(pa.table({**{f"f{i}": x[:, i] for i in range(6)}, "y": y}), path)
    return path


def _args(data: Path) -> list[str]:
    # 1800 training rows in batches of 32: 57 steps an epoch, a checkpoint every 10
    return [*TANDEM, "train", str(data), "--target", "y", "--name", "m", "--model", "mlp",
            "--param", "max_epochs=10", "--param", "batch_size=32", "--param", "dropout=0.2",
            "--checkpoint-every", "10", "--checkpoint-seconds", "0", "--json"]  # fmt: skip


def _graph(home: Path) -> bytes:
    (bundle,) = (home / "artifacts").glob(f"*/*/{GRAPH}")
    return bundle.read_bytes()


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    data = _data(tmp_path / "d.csv")
    whole = subprocess.run(_args(data), env=cli_env(tmp_path / "a"), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    home = tmp_path / "b"
    checkpoints = home / "checkpoints" / "m"
    for _ in range(5):  # the kill must land while the loop runs, after a checkpoint
        proc = subprocess.Popen(_args(data), env=cli_env(home), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while not list(checkpoints.glob("*/mlp/checkpoint.pt")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        time.sleep(random.uniform(0, 1.0))
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        listed = subprocess.run([*TANDEM, "models", "--json"], env=cli_env(home),
                                capture_output=True, text=True)  # fmt: skip
        # a kill that lands after the model's registration committed comes too late to test
        # anything: that run finished, as does one that exited before the kill
        if alive and json.loads(listed.stdout) == []:
            break
        shutil.rmtree(home)  # start again from nothing
    else:
        pytest.fail("the run always finished before the kill")
    assert proc.returncode == -signal.SIGKILL
    assert len(list(checkpoints.glob("*/mlp/checkpoint.pt"))) == 1
    resumed = subprocess.run([*_args(data), "--resume"], env=cli_env(home), capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr  # it did not quietly start over
    assert _graph(home) == _graph(tmp_path / "a")
    assert not checkpoints.exists()  # registered: the checkpoints are gone


def test_loop_options_and_curves_from_the_command_line(tmp_path: Path) -> None:
    data, env = _data(tmp_path / "d.csv"), cli_env(tmp_path / "home")
    base = [*TANDEM, "train", str(data), "--target", "y", "--name", "m", "--model", "mlp"]
    trained = subprocess.run(
        [*base, "--precision", "bf16", "--param", "max_epochs=4", "--param", "monitor=roc_auc",
         "--param", "schedule=one-cycle", "--param", "clip_norm=1.0", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    curves = subprocess.run([*TANDEM, "models", "curves", "m:1", "--json"], env=env,
                            capture_output=True, text=True)  # fmt: skip
    got = json.loads(curves.stdout)
    assert got["epoch"] == [1, 2, 3, 4] and len(got["roc_auc"]) == 4 and len(got["lr"]) == 4
    assert got["lr"][-1] < got["lr"][1]  # one-cycle anneals
    for extra, message in (
        (["--precision", "fp16"], "fp16 training needs a CUDA GPU"),
        (["--workers", "2"], "need --engine ray"),
        (["--param", "monitor=r2"], "cannot monitor 'r2' for classification"),
        (["--param", "schedule=cosine"], "unknown schedule 'cosine'"),
    ):
        refused = subprocess.run([*base, *extra], env=env, capture_output=True, text=True)
        assert refused.returncode == 2, (extra, refused.stderr)
        assert message in refused.stderr and "Traceback" not in refused.stderr
    wrong = subprocess.run([*TANDEM, "models", "curves", "m:1", "--family", "gbdt"], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert wrong.returncode == 2 and "no per-epoch record of a 'gbdt' fit" in wrong.stderr
