from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tandem.bundle import FORMAT_VERSION, Manifest, freeze, load_bundle
from tandem.bundle.graph import GraphBuilder
from tandem.data.schema import ColumnSpec
from tandem.errors import BundleError


def _graph() -> bytes:
    g = GraphBuilder("double")
    x = g.input("x", "double", [None, 1])
    g.output(g.node("Mul", [x, g.const(np.array([[2.0]]))]), "value", "double", [None, 1])
    return g.build().SerializeToString()


def _manifest() -> Manifest:
    return Manifest(
        name="m", version=1, created_at="2026-01-01T00:00:00+00:00", task="regression",
        family="linear", target="y", inputs=(ColumnSpec(name="x", kind="numeric"),),
        details={"metrics": {"test": {"r2": 1.0}}},
    )  # fmt: skip


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bundle"
    freeze(path, _manifest(), _graph())
    return path


def test_freeze_then_load_gives_the_same_manifest_and_graph(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.manifest.inputs == _manifest().inputs
    assert b.manifest.details["metrics"] == {"test": {"r2": 1.0}}
    assert b.graph == _graph()
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["manifest.json", "model.onnx"]
    raw = json.loads((bundle_dir / "manifest.json").read_text())
    assert raw["format_version"] == FORMAT_VERSION
    assert set(raw["files"]) == {"model.onnx"}


def test_freeze_refuses_an_existing_path_and_leaves_nothing_on_failure(bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="already exists"):
        freeze(bundle_dir, _manifest(), _graph())
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]


def test_a_flipped_byte_is_refused_naming_the_file(bundle_dir: Path) -> None:
    graph = bytearray((bundle_dir / "model.onnx").read_bytes())
    graph[len(graph) // 2] ^= 0xFF
    (bundle_dir / "model.onnx").write_bytes(bytes(graph))
    with pytest.raises(BundleError, match="'model.onnx'.*altered"):
        load_bundle(bundle_dir)


def test_a_truncated_file_is_refused_naming_the_file(bundle_dir: Path) -> None:
    graph = (bundle_dir / "model.onnx").read_bytes()
    (bundle_dir / "model.onnx").write_bytes(graph[:-10])
    with pytest.raises(BundleError, match="'model.onnx'.*truncated"):
        load_bundle(bundle_dir)


def test_a_missing_file_is_refused_naming_the_file(bundle_dir: Path) -> None:
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(BundleError, match="'model.onnx' is missing"):
        load_bundle(bundle_dir)
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match="'manifest.json' is missing"):
        load_bundle(bundle_dir)


def test_an_edited_manifest_is_caught_by_the_registry_digest(bundle_dir: Path) -> None:
    digest = load_bundle(bundle_dir).digest
    raw = json.loads((bundle_dir / "manifest.json").read_text())
    raw["target"] = "something else"
    (bundle_dir / "manifest.json").write_text(json.dumps(raw))
    load_bundle(bundle_dir)  # still a well-formed Bundle on its own...
    with pytest.raises(BundleError, match="'manifest.json'.*altered"):
        load_bundle(bundle_dir, expected_digest=digest)  # ...but not the one registered


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m.update(format="other"), "not a tandem Bundle"),
        (lambda m: m.pop("inputs"), "lacks or mangles"),
        (lambda m: m["files"].update({"../x": {"sha256": "0", "bytes": 1}}), "outside the Bundle"),
    ],
)
def test_malformed_manifests_are_refused(bundle_dir: Path, edit: object, message: str) -> None:
    raw = json.loads((bundle_dir / "manifest.json").read_text())
    edit(raw)  # type: ignore[operator]
    (bundle_dir / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_not_json_and_no_directory(bundle_dir: Path, tmp_path: Path) -> None:
    (bundle_dir / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
