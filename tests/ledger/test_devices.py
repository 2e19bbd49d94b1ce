"""Counting a graph's work (hand-built graphs and real Bundles), the device table (defaults, a
user's overrides, bad files) and the estimates built on both, checked against hand arithmetic."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import tandem
from tandem import Registry, Settings
from tandem.bundle.store import load_bundle
from tandem.errors import BundleError, ConfigError
from tandem.ledger.cost import PriceTable
from tandem.ledger.devices import (
    Assumptions,
    DeviceSpec,
    DeviceTable,
    Estimate,
    NoEstimate,
    calibrate_efficiency,
    estimate_inference,
    estimate_training,
)
from tandem.ledger.flops import GraphCost, graph_cost
from tests.helpers import ROOT, mixed_table

DEFAULTS = ROOT / "src/tandem/ledger/devices.toml"
ML = "ai.onnx.ml"


@pytest.fixture(autouse=True)
def _no_user_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_DEVICES", raising=False)


def _graph(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, int, list[Any]]],
    outputs: list[tuple[str, int, list[Any]]],
    inits: dict[str, np.ndarray] | None = None,
    ml_opset: int = 5,
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(ML, ml_opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


# --- counting a graph -------------------------------------------------------------------------


def test_a_matmul_costs_2kn_per_row_and_elementwise_ops_one_per_element() -> None:
    F = TensorProto.FLOAT
    graph = _graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        [("x", F, ["n", 5])],
        [("y", F, ["n", 3])],
        {"w": np.ones((5, 3), np.float32), "b": np.zeros(3, np.float32)},
    )
    cost = graph_cost(graph)
    assert cost.by_op == {"MatMul": 2 * 5 * 3, "Add": 3, "Relu": 3}
    assert cost.flops_per_row == 36 and cost.uncounted == () and cost.host_ops == ()
    assert (cost.bytes_per_row_in, cost.bytes_per_row_out) == (5 * 4, 3 * 4)
    assert cost.weight_bytes == (15 + 3) * 4 and cost.nodes == 3
    assert cost.activation_bytes_per_row == 3 * 3 * 4


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_counts_its_inner_dimension_however_transposed_plus_the_bias(trans_a: int) -> None:
    D = TensorProto.DOUBLE
    x_shape: list[Any] = [4, None] if trans_a else [None, 4]  # the batch need not lead
    gemm = helper.make_node("Gemm", ["x", "w", "c"], ["y"], transA=trans_a, transB=1)
    graph = _graph(
        [gemm],
        [("x", D, x_shape)],
        [("y", D, [None, 2])],
        {"w": np.ones((2, 4)), "c": np.zeros(2)},
    )
    cost = graph_cost(graph)
    assert cost.by_op == {"Gemm": 2 * 4 * 2 + 2}
    assert cost.bytes_per_row_in == 4 * 8


def test_what_cannot_be_counted_is_named_not_silently_zero() -> None:
    F = TensorProto.FLOAT
    graph = _graph(
        [
            helper.make_node("Einsum", ["x", "w"], ["e"], equation="ij,jk->ik"),
            helper.make_node("Identity", ["e"], ["f"]),
            helper.make_node("Sigmoid", ["f"], ["y"]),
        ],
        [("x", F, [None, 3])],
        [("y", F, [None, 2])],
        {"w": np.ones((3, 2), np.float32)},
    )
    cost = graph_cost(graph)
    assert cost.uncounted == ("Einsum",)
    assert cost.by_op == {"Identity": 0.0, "Sigmoid": 2.0} and cost.flops_per_row == 2.0
    assert cost.nodes == 2  # Identity launches nothing


# Two trees: the first splits twice (leaves at depths 1, 2, 2: mean 5/3), the second once.
_MEAN_DEPTHS = 5 / 3 + 1


def test_tree_ensemble_costs_each_trees_mean_leaf_depth() -> None:
    D = TensorProto.DOUBLE
    tree = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain=ML, n_targets=1, aggregate_function=1,
        post_transform=0, tree_roots=[0, 2], nodes_featureids=[0, 1, 0],
        nodes_modes=numpy_helper.from_array(np.zeros(3, np.uint8)),
        nodes_splits=numpy_helper.from_array(np.full(3, 0.5)),
        nodes_truenodeids=[0, 1, 3], nodes_trueleafs=[1, 1, 1],
        nodes_falsenodeids=[1, 2, 4], nodes_falseleafs=[0, 1, 1],
        leaf_targetids=[0] * 5, leaf_weights=numpy_helper.from_array(np.arange(5.0)),
    )  # fmt: skip
    cost = graph_cost(_graph([tree], [("x", D, [None, 2])], [("y", D, [None, 1])]))
    assert cost.by_op == {"TreeEnsemble": pytest.approx(_MEAN_DEPTHS)}
    assert cost.host_ops == ("TreeEnsemble",)
    # the tree arrays are the weights: 3 modes (uint8) + 3 splits + 5 leaves (double) + ints
    assert cost.weight_bytes == 3 + 8 * (3 + 5) + 8 * (2 + 3 + 3 * 4 + 5)


def test_legacy_tree_ensemble_regressor_and_linear_regressor_are_counted_too() -> None:
    F = TensorProto.FLOAT
    modes = ["BRANCH_LEQ", "LEAF", "BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_LEQ", "LEAF", "LEAF"]
    trees = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["t"], domain=ML, n_targets=1,
        nodes_treeids=[0] * 5 + [1] * 3, nodes_nodeids=[0, 1, 2, 3, 4, 0, 1, 2],
        nodes_modes=modes, nodes_featureids=[0] * 8, nodes_values=[0.5] * 8,
        nodes_truenodeids=[1, 0, 3, 0, 0, 1, 0, 0], nodes_falsenodeids=[2, 0, 4, 0, 0, 2, 0, 0],
        target_ids=[0] * 5, target_nodeids=[1, 3, 4, 1, 2], target_treeids=[0, 0, 0, 1, 1],
        target_weights=[1.0] * 5,
    )  # fmt: skip
    linear = helper.make_node(
        "LinearRegressor", ["x"], ["l"], domain=ML, coefficients=[1.0] * 6, targets=2
    )
    graph = _graph(
        [trees, linear], [("x", F, [None, 3])], [("t", F, [None, 1]), ("l", F, [None, 2])],
        ml_opset=3,
    )  # fmt: skip
    cost = graph_cost(graph)
    assert cost.by_op == {
        "TreeEnsembleRegressor": pytest.approx(_MEAN_DEPTHS),
        "LinearRegressor": 12,
    }


def test_a_tree_that_loops_and_bytes_that_are_no_graph_are_refused() -> None:
    D = TensorProto.DOUBLE
    loop = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain=ML, n_targets=1, tree_roots=[0],
        nodes_featureids=[0], nodes_modes=numpy_helper.from_array(np.zeros(1, np.uint8)),
        nodes_splits=numpy_helper.from_array(np.zeros(1)), nodes_truenodeids=[0],
        nodes_trueleafs=[0], nodes_falsenodeids=[0], nodes_falseleafs=[1], leaf_targetids=[0],
        leaf_weights=numpy_helper.from_array(np.zeros(1)),
    )  # fmt: skip
    with pytest.raises(BundleError, match="cycle"):
        graph_cost(_graph([loop], [("x", D, [None, 1])], [("y", D, [None, 1])]))
    with pytest.raises(BundleError, match="ONNX"):
        graph_cost(b"\x00 not a model \xff")


def _bundle_graph(home: Path, ref: str) -> bytes:
    with Registry(Settings(home=home)) as reg:
        return load_bundle(reg.get(ref).path).graph


def test_an_mlp_bundle_costs_at_least_twice_its_weights_per_row(trained_home: Path) -> None:
    graph = _bundle_graph(trained_home, "num:1")
    model = onnx.load_from_string(graph)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    layers = [
        (weights[n.input[1]], weights[n.input[2]]) for n in model.graph.node if n.op_type == "Gemm"
    ]
    assert [w.shape for w, _ in layers] == [(32, 6), (32, 32), (2, 32)]
    cost = graph_cost(graph)
    macs = sum(w.size for w, _ in layers)
    assert cost.by_op["Gemm"] == 2 * macs + sum(b.size for _, b in layers)
    assert 2 * macs <= cost.flops_per_row < 1.1 * (2 * macs)
    assert cost.uncounted == () and cost.host_ops == ()
    assert cost.bytes_per_row_in == 6 * 8  # six float64 columns, batch on the second axis
    assert cost.weight_bytes >= 4 * macs


def _trees(graph: bytes) -> int:
    (node,) = [n for n in onnx.load_from_string(graph).graph.node if n.op_type == "TreeEnsemble"]
    (roots,) = [a.ints for a in node.attribute if a.name == "tree_roots"]
    return len(roots)


def test_a_gbdt_bundle_costs_comparisons_that_grow_with_its_trees(
    trained_home: Path, tmp_path: Path
) -> None:
    big = _bundle_graph(trained_home, "mixed:1")
    with Registry(Settings(home=tmp_path)) as reg:
        tandem.train(mixed_table(400), target="target", name="few", model="gbdt",
                     params={"max_rounds": 3}, registry=reg)  # fmt: skip
    small = _bundle_graph(tmp_path, "few:1")
    assert _trees(small) < _trees(big)
    costs = [graph_cost(g) for g in (small, big)]
    assert costs[0].by_op["TreeEnsemble"] < costs[1].by_op["TreeEnsemble"]
    for graph, cost in zip((small, big), costs, strict=True):
        # every tree makes at least one comparison and, with 31 leaves, at most 30
        assert _trees(graph) <= cost.by_op["TreeEnsemble"] <= 30 * _trees(graph)
        assert cost.uncounted == ()
        assert cost.host_ops == ("LabelEncoder", "TreeEnsemble")
        assert cost.host_ops_per_row == cost.by_op["TreeEnsemble"] + cost.by_op["LabelEncoder"]


def test_importing_the_module_does_not_load_onnx() -> None:
    """`tandem advise` runs from the CLI, which must start without the training stack."""
    code = "import sys, tandem.ledger.advise\nprint('onnx' in sys.modules)"
    env = {"PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


# --- the device table -------------------------------------------------------------------------


def test_defaults_declare_every_device_with_a_source_and_match_the_price_table(
    tmp_path: Path,
) -> None:
    table = DeviceTable.load(settings=Settings(home=tmp_path))
    prices = PriceTable.load(settings=Settings(home=tmp_path))
    assert table.sources == ("tandem defaults (devices.toml)",)
    assert {"c7i.2xlarge", "T4", "L4", "A10G", "A100", "H100", "H200"} <= set(table.devices)
    text = DEFAULTS.read_text()
    for name, spec in table.devices.items():
        header = f'[device."{name}"]' if "." in name else f"[device.{name}]"
        before = text[: text.index(header)].rsplit("\n\n", 1)[-1]
        assert re.search(r"[Ss]ource", before) and re.search(r"20\d\d", before), name
        assert (spec.hourly_price(prices) or 0) > 0, name  # its price_key names a real rate
        if spec.kind == "gpu":  # the same board power as the energy estimates use
            assert prices.estimates.gpu_watts[spec.price_key.split(".")[1]] == spec.watts
        else:
            assert spec.watts == spec.price_units * prices.estimates.cpu_watts_per_core
    assert table.devices["T4"].hourly_price(prices) == prices.gpu_hour["T4"]
    cpu = table.devices["c7i.2xlarge"]
    assert cpu.hourly_price(prices) == pytest.approx(8 * prices.cpu_core_hour)
    assert cpu.host_link_gbps == 0 and all(
        d.host_link_gbps > 0 for d in table.devices.values() if d.kind == "gpu"
    )


_NEW_DEVICE = """
[device.RTX4090]
kind = "gpu"
fp32_tflops = 82.6
int8_tops = 660
memory_gb = 24
memory_gbps = 1008
watts = 450
host_link_gbps = 32
launch_us = 6
price_key = "gpu_hour.RTX4090"
price_units = 1
"""


def test_a_users_file_overrides_only_the_keys_it_names(tmp_path: Path) -> None:
    mine = tmp_path / "devices.toml"
    mine.write_text(
        "[assumptions]\ngpu_inference_efficiency = 0.2\n[device.T4]\nwatts = 60\n" + _NEW_DEVICE
    )
    default = DeviceTable.load(settings=Settings(home=tmp_path / "none"))
    table = DeviceTable.load(mine)
    assert table.sources == ("tandem defaults (devices.toml)", str(mine))
    assert table.devices["T4"] == replace(default.devices["T4"], watts=60.0)
    assert table.devices["H100"] == default.devices["H100"]
    assert table.devices["RTX4090"].memory_gbps == 1008.0
    assert table.assumptions == replace(default.assumptions, gpu_inference_efficiency=0.2)
    prices = PriceTable.load(settings=Settings(home=tmp_path / "none"))
    assert table.devices["RTX4090"].hourly_price(prices) is None  # no such rate: not priced


def test_path_beats_environment_beats_tandem_home(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.mkdir(parents=True)
    (home / "devices.toml").write_text("[device.T4]\nwatts = 1\n")
    assert DeviceTable.load().devices["T4"].watts == 1
    env = tmp_path / "env.toml"
    env.write_text("[device.T4]\nwatts = 2\n")
    monkeypatch.setenv("TANDEM_DEVICES", str(env))
    assert DeviceTable.load().devices["T4"].watts == 2
    given_file = tmp_path / "given.toml"
    given_file.write_text("[device.T4]\nwatts = 3\n")
    assert DeviceTable.load(given_file).devices["T4"].watts == 3
    monkeypatch.setenv("TANDEM_DEVICES", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml does not exist"):
        DeviceTable.load()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[device.T4\n", "is not valid TOML"),
        ("[gpus]\nT4 = 1\n", r"unknown key 'gpus'; known: \[assumptions\]"),
        ("device = 3\n", r"'device' must be a table"),
        ("[device]\nT4 = 3\n", r"'device.T4' must be a table"),
        ("[device.T4]\ntflops = 9\n", r"unknown key 'device.T4.tflops'; known keys: kind, "),
        ("[device.T4]\nkind = \"tpu\"\n", r"'device.T4.kind' must be \"cpu\" or \"gpu\"; got 'tpu'"),
        ("[device.T4]\nwatts = -70\n", r"'device.T4.watts' must be a number >= 0; got -70"),
        ("[device.T4]\nfp32_tflops = 0\n", r"'device.T4.fp32_tflops' must be a number > 0"),
        ("[device.T4]\nmemory_gbps = \"fast\"\n", r"'device.T4.memory_gbps' must be a number"),
        ("[device.T4]\nprice_key = \"T4\"\n", r"'device.T4.price_key' must be \"cpu_core_hour\" or \"gpu_hour.NAME\""),
        ("[device.T4]\nprice_units = 1.5\n", r"'device.T4.price_units' must be a whole number"),
        ("[device.new]\nkind = \"gpu\"\n", r"'device.new' lacks fp32_tflops, .*: a new entry must give every key"),
        ("[assumptions]\ncpu_inference_efficiency = 1.5\n", r"'assumptions.cpu_inference_efficiency' must be a fraction > 0 and <= 1"),
        ("[assumptions]\nefficiency = 0.5\n", r"unknown key 'assumptions.efficiency'"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_naming_the_file_the_key_and_what_is_allowed(
    tmp_path: Path, text: str, error: str
) -> None:
    bad = tmp_path / "devices.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(bad)) + ".*" + error):
        DeviceTable.load(bad)


# --- estimates ----------------------------------------------------------------------------------


def _cost(**over: Any) -> GraphCost:
    fields: dict[str, Any] = dict(
        flops_per_row=1e6, by_op={"MatMul": 1e6}, uncounted=(), bytes_per_row_in=1000,
        bytes_per_row_out=24, activation_bytes_per_row=4000, weight_bytes=4_000_000, nodes=10,
        host_ops=(),
    )  # fmt: skip
    return GraphCost(**(fields | over))


GPU = DeviceSpec(
    name="G", kind="gpu", fp32_tflops=10.0, int8_tops=40.0, memory_gb=16.0, memory_gbps=1000.0,
    watts=100.0, host_link_gbps=25.0, launch_us=5.0, price_key="gpu_hour.G", price_units=1,
)  # fmt: skip
CPU = replace(
    GPU, name="C", kind="cpu", fp32_tflops=1.0, memory_gbps=50.0, host_link_gbps=0.0, launch_us=1.0
)
ASSUME = Assumptions(
    cpu_inference_efficiency=0.5, gpu_inference_efficiency=0.5, cpu_training_efficiency=0.25,
    gpu_training_efficiency=0.25, run_overhead_us=20.0, host_op_ns=7.0,
)  # fmt: skip


def test_inference_estimate_matches_the_roofline_by_hand() -> None:
    est = estimate_inference(_cost(), GPU, batch=100, assumptions=ASSUME)
    compute = 100 * 1e6 / (10e12 * 0.5)  # 20 µs, above memory: (4e6 + 100 × 5024) B / 1 TB/s
    fixed = 10 * 5e-6 + 20e-6  # launches + run()
    link = 100 * (1000 + 24) / 25e9
    assert est.seconds == pytest.approx(compute + fixed + link, rel=1e-12)
    assert est.rows == 100 and est.rows_per_s == pytest.approx(100 / est.seconds)
    assert est.watts == 100 and est.energy_j == pytest.approx(100 * est.seconds)
    assert est.estimated is True and est.phase == "inference"
    assert est.method.startswith("estimated from declared specs, not measured on G (gpu)")
    assert (
        "20 µs at 10 TFLOP/s × 0.5 efficiency" in est.method and "25 GB/s host link" in est.method
    )

    on_cpu = estimate_inference(_cost(), CPU, batch=100, assumptions=ASSUME)
    compute = 100 * 1e6 / (1e12 * 0.5)  # 200 µs, above memory: (4e6 + 100 × 5024) B / 50 GB/s
    assert on_cpu.seconds == pytest.approx(compute + 10 * 1e-6 + 20e-6, rel=1e-12)
    assert "host link" not in on_cpu.method


def test_tree_work_runs_at_host_op_ns_and_int8_at_the_int8_peak() -> None:
    trees = _cost(flops_per_row=1e6 + 50, by_op={"MatMul": 1e6, "TreeEnsemble": 50.0},
                  host_ops=("TreeEnsemble",))  # fmt: skip
    base = estimate_inference(_cost(), GPU, batch=100, assumptions=ASSUME)
    est = estimate_inference(trees, GPU, batch=100, assumptions=ASSUME)
    assert est.seconds - base.seconds == pytest.approx(100 * 50 * 7e-9)
    assert "no CUDA kernel for TreeEnsemble" in est.method
    quantized = _cost(by_op={"MatMulInteger": 1e6})
    est = estimate_inference(quantized, GPU, batch=100, assumptions=ASSUME)
    assert est.seconds - base.seconds == pytest.approx(100 * 1e6 / 40e12 / 0.5 - 20e-6)
    assert "int8 matrix products at 40 TOPS" in est.method


def test_training_estimate_for_an_mlp_and_an_honest_refusal_for_trees_and_linear() -> None:
    est = estimate_training(
        _cost(), GPU, rows=10_000, epochs=20, family="mlp", assumptions=ASSUME, batch_size=256
    )
    assert isinstance(est, Estimate)
    steps = math.ceil(10_000 / 256) * 20
    expected = (
        3 * 1e6 * 200_000 / (10e12 * 0.25)  # 3 × forward FLOPs at the training efficiency
        + steps * 3 * 10 * 5e-6  # launches: forward, backward, optimizer
        + 200_000 * 1000 / 25e9  # the rows cross the host link every epoch
    )
    assert est.seconds == pytest.approx(expected) and est.rows == 200_000
    assert est.phase == "training" and est.estimated and "3 × forward" in est.method
    for family, words in [("gbdt", "LightGBM"), ("linear", "scikit-learn"), ("bert", "'bert'")]:
        none = estimate_training(_cost(), GPU, rows=10, epochs=1, family=family, assumptions=ASSUME)
        assert isinstance(none, NoEstimate) and words in none.reason and none.device == "G"


def test_calibration_recovers_the_efficiency_a_measurement_implies() -> None:
    for eff in (0.05, 0.3, 0.9):
        assume = replace(ASSUME, gpu_inference_efficiency=eff)
        measured = estimate_inference(_cost(), GPU, batch=1000, assumptions=assume).seconds
        got = calibrate_efficiency(_cost(), GPU, batch=1000, seconds=measured, assumptions=ASSUME)
        assert got == pytest.approx(eff)
    # no slower than the launches alone: the compute share cannot be told apart
    assert calibrate_efficiency(_cost(), GPU, batch=1, seconds=60e-6, assumptions=ASSUME) is None
    with pytest.raises(ConfigError, match="batch must be"):
        estimate_inference(_cost(), GPU, batch=0, assumptions=ASSUME)


def test_every_default_device_estimates_every_real_bundle(trained_home: Path) -> None:
    table = DeviceTable.load(settings=Settings(home=trained_home))
    for ref in ("num:1", "mixed:1"):
        cost = graph_cost(_bundle_graph(trained_home, ref))
        for device in table.devices.values():
            est = estimate_inference(cost, device, batch=64, assumptions=table.assumptions)
            assert 0 < est.seconds < 1 and math.isfinite(est.rows_per_s), (ref, device.name)
            assert est.method.startswith("estimated") and est.estimated
            gbdt_on_gpu = ref == "mixed:1" and device.kind == "gpu"
            assert ("no CUDA kernel" in est.method) == gbdt_on_gpu


_costs = st.builds(
    _cost,
    flops_per_row=st.floats(0, 1e9),
    weight_bytes=st.integers(0, 10**10),
    activation_bytes_per_row=st.integers(0, 10**7),
    nodes=st.integers(0, 500),
)


@given(_costs, st.sampled_from([GPU, CPU]), st.integers(1, 10**5), st.integers(1, 10**5))
def test_throughput_never_falls_as_the_batch_grows(
    cost: GraphCost, device: DeviceSpec, a: int, b: int
) -> None:
    small, large = sorted((a, b))
    r = [
        estimate_inference(cost, device, batch=n, assumptions=ASSUME).rows_per_s
        for n in (small, large)
    ]
    assert r[1] >= r[0] * (1 - 1e-12)


@given(_costs, st.floats(0.01, 1e3), st.floats(0.01, 1e3), st.integers(1, 4096))
def test_a_faster_peak_never_gives_a_slower_estimate(
    cost: GraphCost, p: float, q: float, batch: int
) -> None:
    slow, fast = (replace(GPU, fp32_tflops=t) for t in sorted((p, q)))
    s = [estimate_inference(cost, d, batch=batch, assumptions=ASSUME).seconds for d in (slow, fast)]
    assert s[1] <= s[0] * (1 + 1e-12)
