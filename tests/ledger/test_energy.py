"""RAPL counters read from a real powercap-shaped folder (the machine's own are root-only or
absent here); NVML on a real GPU where there is one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tandem.ledger.energy import Rapl, busy_cpu_seconds, gpus
from tandem.ledger.meter import Meter


def zone(root: Path, name: str, label: str, uj: int | None, wraps: int = 2**32) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "name").write_text(label + "\n")
    (folder / "max_energy_range_uj").write_text(f"{wraps}\n")
    if uj is not None:
        (folder / "energy_uj").write_text(f"{uj}\n")
    return folder


def test_rapl_reads_packages_and_dram_not_the_zones_inside_a_package(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "package-0", 1_000)
    zone(tmp_path, "intel-rapl:0/intel-rapl:0:0", "core", 500)  # inside the package's count
    zone(tmp_path, "intel-rapl:0/intel-rapl:0:1", "dram", 200)
    zone(tmp_path, "intel-rapl:1", "package-1", 3_000)
    zone(tmp_path, "intel-rapl:2", "package-2", None)  # no readable counter: skipped
    rapl = Rapl(tmp_path)
    assert [z.name for z in rapl.zones] == ["package-0", "dram", "package-1"]
    assert rapl.read() == [1_000, 200, 3_000]
    assert rapl.describe() == "RAPL package-0+dram+package-1"


def test_rapl_energy_survives_a_counter_wrapping_around(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "package-0", 0, wraps=1_000_000)
    rapl = Rapl(tmp_path)
    # 0.9 J to the wrap, then 0.3 J past it
    assert rapl.joules([100_000], [300_000]) == pytest.approx(0.2)
    assert rapl.joules([700_000], [200_000]) == pytest.approx(0.5)


def test_no_counters_means_none_not_an_error(tmp_path: Path) -> None:
    rapl = Rapl(tmp_path / "absent")
    assert not rapl.available and rapl.read() is None
    with Meter(counters=rapl) as m:
        pass
    assert m.profile.cpu_energy_j is None and m.profile.energy_source == ""


def test_meter_gives_this_process_its_cpu_share_of_the_package_energy(tmp_path: Path) -> None:
    counter = zone(tmp_path, "intel-rapl:0", "package-0", 5_000_000) / "energy_uj"
    rapl = Rapl(tmp_path)
    with Meter(counters=rapl) as m:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        counter.write_text("15000000\n")  # the package used 10 J meanwhile
    share_j = m.profile.cpu_energy_j
    assert share_j is not None and 0 < share_j <= 10.0
    # this process was most of the machine's busy time: on an idle 2-core machine ~all of it
    assert share_j > 2.0
    assert "RAPL package-0" in m.profile.energy_source
    assert "of busy CPU" in m.profile.energy_source


def test_machine_busy_time_grows_with_work() -> None:
    before = busy_cpu_seconds()
    if before is None:
        pytest.skip("reads /proc/stat (Linux)")
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    after = busy_cpu_seconds()
    assert after is not None and after - before >= 0.15


def test_meter_laps_split_the_run_and_sum_to_it() -> None:
    with Meter() as m:
        laps = []
        for pause in (0.05, 0.1):
            time.sleep(pause)
            laps.append(m.lap())
    assert laps[0][0] >= 0.05 and laps[1][0] >= 0.1
    assert sum(w for w, _ in laps) <= m.profile.wall_seconds


def test_nvml_measures_a_gpu_this_process_uses() -> None:
    if not gpus().available:
        pytest.skip("no NVIDIA GPU with a driver on this machine (CI has none)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    with Meter() as m:
        x = torch.randn(4096, 4096, device="cuda")
        for _ in range(50):
            x = x @ x / 4096
        torch.cuda.synchronize()
    p = m.profile
    assert p.gpus and p.gpu_seconds >= p.wall_seconds * 0.99
    assert p.gpu_energy_j is None or p.gpu_energy_j > 0
