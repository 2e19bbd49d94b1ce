"""The price table (defaults, a user's overrides, bad files) and what a phase costs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem.config import Settings
from tandem.errors import ConfigError
from tandem.ledger.cost import PriceTable, cost_of
from tandem.ledger.meter import Profile


@pytest.fixture(autouse=True)
def _no_user_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_PRICES", raising=False)


def test_defaults_carry_every_rate_with_a_source(tmp_path: Path) -> None:
    table = PriceTable.load(settings=Settings(home=tmp_path))
    assert table.sources == ("tandem defaults (prices.toml)",)
    assert table.cpu_core_hour > 0 and table.kwh > 0 and table.pue >= 1
    assert table.grid_gco2e_per_kwh > 0 and table.estimates.cpu_watts_per_core > 0
    # every default figure is documented with where it came from and when
    text = (Path(__file__).parents[2] / "src/tandem/ledger/prices.toml").read_text()
    for key in ("cpu_core_hour =", "kwh =", "pue =", "grid_gco2e_per_kwh =", "[gpu_hour]",
                "[estimates]"):  # fmt: skip
        before = text[: text.index("\n" + key)].rsplit("\n\n", 1)[-1]
        assert "Source" in before and "20" in before, key


def test_a_users_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    mine = tmp_path / "prices.toml"
    mine.write_text("kwh = 0.30\n[gpu_hour]\nRTX4090 = 0.7\n[estimates]\ncpu_watts_per_core = 6\n")
    table = PriceTable.load(mine)
    default = PriceTable.load(settings=Settings(home=tmp_path / "none"))
    assert table.kwh == 0.30 and table.cpu_core_hour == default.cpu_core_hour
    assert table.gpu_rate("NVIDIA GeForce RTX4090") == 0.7
    assert table.gpu_rate("NVIDIA H100 80GB HBM3") == default.gpu_rate("H100")
    assert table.estimates.cpu_watts_per_core == 6
    assert table.estimates.memory_watts_per_gb == default.estimates.memory_watts_per_gb
    assert table.sources[-1] == str(mine)


def test_the_file_is_found_from_the_environment_then_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "prices.toml").write_text("kwh = 0.2\n")
    assert PriceTable.load(settings=Settings(home=home)).kwh == 0.2
    env = tmp_path / "env.toml"
    env.write_text("kwh = 0.4\n")
    monkeypatch.setenv("TANDEM_PRICES", str(env))
    assert PriceTable.load(settings=Settings(home=home)).kwh == 0.4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kwhh = 0.3\n", "unknown key 'kwhh'; known keys: "),
        ("kwh = -1\n", "'kwh' must be a number >= 0; got -1"),
        ("kwh = 'cheap'\n", "'kwh' must be a number >= 0"),
        ("pue = 0.9\n", "'pue' is facility over IT power, so >= 1"),
        ("gpu_hour = 3\n", "'gpu_hour' must be a table"),
        ("[estimates]\ncpu_watts = 3\n", "unknown key 'estimates.cpu_watts'"),
        ("kwh = \n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        PriceTable.load(bad)
    assert str(bad) in str(caught.value)


def test_a_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PriceTable.load(tmp_path / "nope.toml")


def test_unmeasured_energy_is_estimated_and_says_so(tmp_path: Path) -> None:
    table = PriceTable.load(settings=Settings(home=tmp_path))
    cost = cost_of(Profile(100.0, 50.0, 1024.0), table)
    est = table.estimates
    assert cost.energy_j == pytest.approx(
        50 * est.cpu_watts_per_core + 100 * est.memory_watts_per_gb
    )
    assert cost.estimated and "CPU estimated" in cost.energy_source
    kwh = cost.energy_j / 3.6e6
    assert cost.money == pytest.approx(
        50 / 3600 * table.cpu_core_hour + kwh * table.pue * table.kwh
    )
    assert cost.carbon_g == pytest.approx(kwh * table.pue * table.grid_gco2e_per_kwh)


def test_measured_energy_is_used_as_measured(tmp_path: Path) -> None:
    table = PriceTable.load(settings=Settings(home=tmp_path))
    p = Profile(10.0, 5.0, 100.0, cpu_energy_j=1234.0, energy_source="RAPL package-0",
                gpu_seconds=10.0, gpu_energy_j=2000.0, gpus=("NVIDIA H100 80GB HBM3",))  # fmt: skip
    cost = cost_of(p, table)
    assert cost.energy_j == 3234.0 and not cost.estimated
    assert "CPU measured (RAPL package-0)" in cost.energy_source
    assert cost.money_parts["gpu"] == pytest.approx(10 / 3600 * table.gpu_hour["H100"])


def test_a_gpu_without_a_rate_is_reported_not_priced_at_zero_silently(tmp_path: Path) -> None:
    table = PriceTable.load(settings=Settings(home=tmp_path))
    cost = cost_of(Profile(10.0, 1.0, 100.0, gpu_seconds=10.0, gpus=("Mystery GPU",)), table)
    assert cost.unpriced_gpus == ("Mystery GPU",) and cost.money_parts["gpu"] == 0
    assert "GPU estimated" in cost.energy_source


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(1.0, 10.0))
def test_cpu_cost_scales_with_cpu_time(wall: float, cpu: float, k: float) -> None:
    table = PriceTable.load(settings=Settings(home=Path("/nonexistent-tandem-home")))
    a = cost_of(Profile(wall, cpu, 0.0), table)
    b = cost_of(Profile(wall, cpu * k, 0.0), table)
    assert b.money == pytest.approx(a.money * k, rel=1e-9, abs=1e-12)
    assert b.carbon_g == pytest.approx(a.carbon_g * k, rel=1e-9, abs=1e-12)
