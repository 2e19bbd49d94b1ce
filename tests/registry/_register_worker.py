"""Register N versions of one model from a separate process.

    python _register_worker.py HOME NAME N [REGISTRY_URL]

Used by test_store's multi-process test; each version's folder holds a file naming the
process and the version number it was given, and the callback sleeps so that the
transactions of several workers overlap.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tandem.config import Settings
from tandem.registry import Registry, VersionRecord


def write(folder: Path, version: int) -> VersionRecord:
    (folder / "owner.txt").write_text(f"{os.getpid()} {version}")
    time.sleep(0.005)
    return VersionRecord(
        digest=f"{os.getpid()}-{version}",
        task="classification",
        family="linear",
        metrics={"auc": 0.5},
        data_fingerprint="fp",
    )


def main() -> None:
    home, name, count, *url = sys.argv[1:]
    with Registry(Settings(home=Path(home), registry=url[0] if url else None)) as registry:
        for _ in range(int(count)):
            print(registry.register(name, write).version, flush=True)


if __name__ == "__main__":
    main()
