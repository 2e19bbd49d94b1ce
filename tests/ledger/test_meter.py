from __future__ import annotations

import subprocess
import sys
import time

from tandem.ledger.meter import Meter


def test_meter_separates_wall_time_from_cpu_time() -> None:
    with Meter() as idle:
        time.sleep(0.3)
    assert idle.profile.wall_seconds >= 0.3
    assert idle.profile.cpu_seconds < 0.1
    with Meter() as busy:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    assert busy.profile.cpu_seconds >= 0.29
    assert busy.profile.peak_rss_mb > 10


def test_meter_counts_finished_children() -> None:
    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    with Meter() as m:
        subprocess.run([sys.executable, "-c", burn], check=True)
    assert m.profile.cpu_seconds >= 0.39


def test_process_clock_and_cpu_from_proc() -> None:
    import os
    import sys
    import time

    import pytest

    from tandem.ledger.meter import process_cpu_seconds, process_started

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    started = process_started()
    assert started is not None and 0 < time.monotonic() - started < 3600
    before = process_cpu_seconds(os.getpid())
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    after = process_cpu_seconds(os.getpid())
    assert before is not None and after is not None and after >= before + 0.03
    assert process_cpu_seconds(2**22 + 12345) is None  # no such process
