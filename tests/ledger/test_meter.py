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
