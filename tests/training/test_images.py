"""Image models: an image folder trains a CNN whose Bundle decodes, resizes and classifies
images the same way in the Predictor, the server (base64 JSON, raw body, OIP BYTES) and batch
jobs over a folder; bad images get clear errors."""

from __future__ import annotations

import base64
import io
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import tandem
from tandem import DataError, Registry, SchemaError, Settings, UsageError
from tandem.batch import BatchOptions, run_batch
from tandem.data.images import image_feed, write_digits_folder
from tandem.monitoring.monitor import check
from tandem.monitoring.predictions import LogOptions, read_log
from tandem.optimize import optimize
from tandem.serving.batcher import _concat
from tests.serving.conftest import running_server


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """scikit-learn's digits as an image folder, and a registry holding a CNN trained on it."""
    root = tmp_path_factory.mktemp("digits")
    folder = write_digits_folder(root / "images")
    home = root / "home"
    with Registry(Settings(home=home)) as reg:
        tandem.train(folder, target=None, name="digits", registry=reg, seed=0)
    yield folder, home


def test_digits_reach_98_percent_and_the_bundle_takes_image_bytes(
    digits: tuple[Path, Path],
) -> None:
    folder, home = digits
    with Registry(Settings(home=home)) as reg:
        version = reg.get("digits")
        predictor = tandem.load("digits", registry=reg)
    assert version.task == "classification" and version.family == "cnn"
    assert version.metrics["accuracy"] >= 0.98, version.metrics  # the goal, test split
    manifest = predictor.manifest
    assert [(c.name, c.kind) for c in manifest.inputs] == [("image", "image")]
    assert manifest.details["image"]["size"] == [8, 8] and manifest.classes[:3] == ("0", "1", "2")

    raw = (folder / "7" / "0007.png").read_bytes()
    as_bytes = predictor.predict([{"image": raw}])[0]
    as_text = predictor.predict([{"image": base64.b64encode(raw).decode()}])[0]
    assert as_bytes == as_text and as_bytes["label"] == "7"


def test_an_image_scores_the_same_whatever_it_is_batched_with(digits: tuple[Path, Path]) -> None:
    folder, home = digits
    predictor = tandem.load("digits", registry=Registry(Settings(home=home)))
    pixels = np.asarray(Image.open(folder / "4" / "0004.png"))
    big = np.kron(pixels, np.ones((3, 3), dtype=np.uint8))  # 24×24: resized in the graph
    rgb = np.stack([pixels] * 3, axis=-1)  # colour: converted to grey on decode
    images = [png(pixels), png(big), png(rgb)]
    alone = [predictor.predict([{"image": b}])[0] for b in images]
    together = predictor.predict([{"image": b} for b in images])
    for one, joint in zip(alone, together, strict=True):
        assert one["label"] == joint["label"]
        assert one["proba_4"] == pytest.approx(joint["proba_4"], abs=1e-6)
    assert alone[0] == alone[2]  # grey and the same picture in RGB are one image


def test_the_server_takes_base64_json_raw_bodies_and_oip_bytes(digits: tuple[Path, Path]) -> None:
    folder, home = digits
    raw = (folder / "3" / "0003.png").read_bytes()
    text = base64.b64encode(raw).decode()

    def post(url: str, body: bytes, kind: str) -> dict[str, object]:
        request = urllib.request.Request(url, body, {"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer

    with running_server(["digits"], home) as server:
        records = post(f"{server.url}/invocations",
                       json.dumps({"dataframe_records": [{"image": text}]}).encode(),
                       "application/json")  # fmt: skip
        body = post(f"{server.url}/invocations", raw, "image/png")
        infer = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        oip = post(f"{server.url}/v2/models/digits/infer", json.dumps(infer).encode(),
                   "application/json")  # fmt: skip
        # Triton's binary extension: the PNG's own bytes, length-prefixed
        blob = len(raw).to_bytes(4, "little") + raw
        head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(blob)}}]}).encode()  # fmt: skip
        request = urllib.request.Request(
            f"{server.url}/v2/models/digits/infer", head + blob,
            {"Inference-Header-Content-Length": str(len(head)),
             "Content-Type": "application/octet-stream"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            binary = json.loads(response.read())
        with pytest.raises(urllib.error.HTTPError) as bad:
            post(f"{server.url}/invocations", b"not an image", "image/png")
        message = json.loads(bad.value.read())["message"]
    predictions = records["predictions"]
    assert isinstance(predictions, list) and predictions[0]["label"] == "3"
    assert body["predictions"] == predictions
    labels = [o for o in oip["outputs"] if o["name"] == "label"]  # type: ignore[index, union-attr]
    assert labels[0]["data"] == ["3"]
    assert next(o for o in binary["outputs"] if o["name"] == "label")["data"] == ["3"]
    assert bad.value.code == 400 and "not an image" in message and "0x" not in message


def test_the_prediction_log_keeps_image_statistics_and_monitor_reads_them(
    digits: tuple[Path, Path],
) -> None:
    folder, home = digits
    files = sorted(folder.glob("*/*.png"))[::9]
    with running_server(["digits"], home, log=LogOptions(sample=1.0, flush_s=0.2)) as server:
        for start in range(0, len(files), 20):
            records = [
                {"image": base64.b64encode(f.read_bytes()).decode()}
                for f in files[start : start + 20]
            ]
            request = urllib.request.Request(
                f"{server.url}/invocations", json.dumps({"dataframe_records": records}).encode(),
                {"Content-Type": "application/json"},
            )  # fmt: skip
            urllib.request.urlopen(request, timeout=10).read()
    settings = Settings(home=home)
    logged = read_log("digits", settings=settings)
    assert logged.num_rows >= len(files)  # the module's other server tests log too
    assert "image" not in logged.column_names  # statistics, not pixels
    np.testing.assert_array_equal(logged.column("image.width").to_numpy(), 8.0)
    with Registry(settings) as reg:
        report = check(reg, "digits", since=timedelta(hours=1))
    assert not report.drifted and "image.brightness" in report.current


def test_batch_scores_an_image_folder_and_a_parquet_with_a_bad_image(
    digits: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, home = digits
    reg = Registry(Settings(home=home))
    predictor = tandem.load("digits", registry=reg)
    loose = tmp_path / "loose"
    loose.mkdir()
    for f in sorted(folder.glob("*/00[0-3]*.png"))[:40]:
        shutil.copy(f, loose / f.name)
    out = tmp_path / "scored.parquet"
    run_batch("digits", BatchOptions([loose], out, keep=["path"]), registry=reg)
    scored = pq.read_table(out)
    assert scored.column("path").to_pylist() == sorted(f.name for f in loose.iterdir())
    expected = predictor.predict(
        [{"image": (loose / p).read_bytes()} for p in scored["path"].to_pylist()]
    )
    assert scored.column("label").to_pylist() == [e["label"] for e in expected]

    images = [(loose / p).read_bytes() for p in scored["path"].to_pylist()[:5]]
    images[2] = b"\x89PNG but not really"
    table = pa.table({"id": list(range(5)), "image": pa.array(images, pa.binary())})
    source = tmp_path / "rows.parquet"
    pq.write_table(table, source)
    out2 = tmp_path / "scored2.parquet"
    result = run_batch("digits", BatchOptions([source], out2, keep=["id"], on_error="skip"),
                       registry=reg)  # fmt: skip
    assert result.rejected == 1 and result.rows_out == 4
    kept = pq.read_table(out2)
    assert kept.column("id").to_pylist() == [0, 1, 3, 4]
    assert kept.column("label").to_pylist() == [expected[i]["label"] for i in (0, 1, 3, 4)]
    reg.close()


def test_monitor_reads_an_image_folder_and_sees_brighter_pictures(
    digits: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, home = digits
    reg = Registry(Settings(home=home))
    same = check(reg, "digits", current=folder)
    assert not same.drifted and same.performance is not None
    assert same.performance.overall["accuracy"] > 0.98  # realized, from the class folders
    bright = tmp_path / "bright"
    for f in sorted(folder.glob("*/*.png"))[:600]:
        (bright / f.parent.name).mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(f)).astype(np.int64)
        Image.fromarray(np.clip(pixels + 60, 0, 255).astype(np.uint8)).save(
            bright / f.parent.name / f.name
        )
    drifted = check(reg, "digits", current=bright).result.drifted_columns
    assert "image.brightness" in drifted, drifted
    reg.close()


def test_colour_images_of_many_sizes_train_and_bad_folders_are_named(
    registry: Registry, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for label, channel in (("red", 0), ("blue", 2)):
        (root / label).mkdir(parents=True)
        for i in range(60):
            side = int(rng.integers(12, 40))
            pixels = rng.integers(0, 60, (side, side + 3, 3)).astype(np.uint8)
            pixels[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4, channel] = 230
            Image.fromarray(pixels).save(root / label / f"{i}.jpg")
    result = tandem.train(root, target=None, name="shapes", registry=registry,
                          params={"max_epochs": 15, "image_size": 16})  # fmt: skip
    manifest = tandem.load("shapes", registry=registry).manifest
    image = manifest.details["image"]
    assert (image["channels"], image["size"]) == (3, [16, 16])
    assert result.leaderboard[0].test["accuracy"] >= 0.9

    (root / "red" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="'red/broken.png' is not an image"):
        tandem.train(root, target=None, name="shapes", registry=registry)
    (root / "red" / "broken.png").unlink()
    (root / "green").mkdir()
    with pytest.raises(DataError, match=r"\['green'\] .* hold no images"):
        tandem.train(root, target=None, name="shapes", registry=registry)
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(root / "red" / "0.jpg", loose / "a.jpg")
    with pytest.raises(DataError, match="not sorted into classes"):
        tandem.train(loose, target=None, name="shapes", registry=registry)
    assert [v.version for v in registry.list_versions("shapes")] == [1]


def test_a_parquet_with_an_image_column_is_an_image_dataset(
    registry: Registry, tmp_path: Path, digits: tuple[Path, Path]
) -> None:
    folder, _ = digits
    files = sorted(folder.glob("[01]/*.png"))
    table = pa.table({"picture": pa.array([f.read_bytes() for f in files], pa.binary()),
                      "digit": [int(f.parent.name) for f in files]})  # fmt: skip
    path = tmp_path / "digits.parquet"
    pq.write_table(table, path)
    result = tandem.train(path, target="digit", name="zero-one", registry=registry,
                          params={"max_epochs": 5})  # fmt: skip
    assert result.family == "cnn"
    predictor = tandem.load("zero-one", registry=registry)
    assert predictor.manifest.inputs[0].name == "picture"
    with pytest.raises(SchemaError, match="row 0 of column 'picture' is a int"):
        predictor.predict([{"picture": 3}])
    with pytest.raises(UsageError, match="takes image input"):
        optimize("zero-one", quantize_method="int8-dynamic", registry=registry)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3)), min_size=1, max_size=5
    )
)
def test_joined_image_requests_keep_every_image_and_its_size(
    shapes: list[tuple[int, int, int]],
) -> None:
    """The batcher pads requests of other image sizes to one tensor; each image is still
    there, at its own size, with zeros only in the padding."""
    rng = np.random.default_rng(len(shapes))
    requests = [
        [rng.integers(1, 255, (h, w, 1)).astype(np.uint8) for _ in range(n)] for h, w, n in shapes
    ]
    feeds = [image_feed(r) for r in requests]
    pixels = _concat([f[0] for f in feeds])
    sizes = _concat([f[1] for f in feeds])
    flat = [im for r in requests for im in r]
    assert pixels.shape[-1] == sizes.shape[-1] == len(flat)
    for i, im in enumerate(flat):
        h, w = sizes[:, i]
        assert (h, w) == im.shape[:2]
        assert (pixels[:h, :w, :, i] == im).all()
        assert pixels[..., i].sum() == im.sum()  # nothing but zeros around it
