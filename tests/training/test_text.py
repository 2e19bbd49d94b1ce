"""Text by transfer learning: a column of texts and a label train the pretrained encoder and
a head into one Bundle that tokenizes with the tokenizer it keeps, serves and batch-scores
without torch, reads long texts in chunks, and refuses empty texts clearly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

import tandem
from tandem import ConfigError, DataError, Registry, SchemaError, Settings
from tandem.batch import BatchOptions, run_batch
from tandem.features.text import TextTokens
from tandem.models.text import TextClassifier, TextEncoder, encoder_folder
from tandem.monitoring.monitor import check
from tandem.training.text import TOKENIZER
from tandem.training.train import kind_of
from tests.helpers import cli_env
from tests.serving.conftest import running_server

TOPICS = {
    "sport": ["The striker scored twice in the final", "Our team won the league after a tense match",
              "The coach praised the defenders after the game", "Fans cheered as the runner broke the record"],
    "money": ["Shares fell after the bank raised interest rates", "The company reported higher quarterly profits",
              "Investors sold bonds as inflation rose again", "The central bank kept its lending rate unchanged"],
    "tech": ["The new phone has a faster chip and a bigger screen", "Engineers released an update to the operating system",
             "The laptop battery now lasts a whole day", "A startup built a chip for machine learning"],
}  # fmt: skip
SETTINGS = {"max_tokens": 32, "chunks": 2}


def news(n: int = 60, seed: int = 0) -> pa.Table:
    """Short articles of three topics, two sentences each, with a topic label."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, sentences in TOPICS.items():
        for _ in range(n):
            a, b = rng.choice(len(sentences), 2, replace=False)
            texts.append(f"{sentences[a]}. {sentences[b]} this week, reporters said.")
            labels.append(label)
    return pa.table({"text": texts, "topic": labels})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("text-home")
    with Registry(Settings(home=home)) as reg:
        tandem.train(news(), target="topic", name="news", registry=reg, params=SETTINGS)
    yield home


def test_a_text_column_trains_the_encoder_and_a_head(trained: Path) -> None:
    with Registry(Settings(home=trained)) as reg:
        version = reg.get("news")
        predictor = tandem.load("news", registry=reg)
    assert (version.task, version.family) == ("classification", "encoder")
    assert version.metrics["accuracy"] >= 0.9
    manifest = predictor.manifest
    assert [(c.name, c.kind) for c in manifest.inputs] == [("text", "text")]
    assert manifest.details["text"] == {"tokenizer": "tokenizer.json", **SETTINGS}
    assert "tokenizer.json" in manifest.files  # hashed with the rest of the Bundle
    out = predictor.predict([{"text": "The goalkeeper saved a penalty in the match"},
                             {"text": "Bond yields rose as the bank raised rates"}])  # fmt: skip
    assert [r["label"] for r in out] == ["sport", "money"]


def test_fine_tuning_the_top_layer_runs_its_epochs_and_keeps_the_best_on_validation(
    registry: Registry,
) -> None:
    table = news(25, seed=2)
    result = tandem.train(table, target="topic", name="tuned", registry=registry,
                          params={**SETTINGS, "fine_tune_layers": 1, "fine_tune_epochs": 2,
                                  "max_epochs": 40})  # fmt: skip
    described = tandem.load("tuned", registry=registry).manifest.details["model"]
    assert described["fine_tune_layers"] == 1
    head_epochs = described["head"]["epochs"]
    # the best validation epoch is kept: the head alone already classifies every validation
    # text here, so no tuning epoch beats it and the top layer is the pretrained one again
    tuned = result.pipeline.family.model_.encoder.bert.encoder.layer
    pretrained = TextEncoder.pretrained().bert.encoder.layer
    changed = [
        not all(
            torch.equal(a, b)
            for a, b in zip(t.state_dict().values(), p.state_dict().values(), strict=True)
        )
        for t, p in zip(tuned[-2:], pretrained[-2:], strict=True)
    ]
    assert changed == [False, False]
    fits = registry.runs("tuned", 1, phase="train")[0].details["epochs"]
    assert max(fits[0]["epoch"]) == head_epochs + 2  # two tuning epochs after the head's
    # the graph holds the tuned layer: parity was checked against the tuned model in memory
    assert result.parity_max_abs <= 1e-5
    rows = table.slice(0, 5)
    frozen = tandem.load("tuned", registry=registry).predict(rows)
    assert frozen.column("label").to_pylist() == rows.column("topic").to_pylist()


@pytest.mark.parametrize("tuned", [0, 1], ids=["frozen", "top-layer-tuned"])
def test_the_validation_answers_kept_from_the_fit_are_the_fitted_models(tuned: int) -> None:
    """Training scores validation with the probabilities the fit kept (not embedding the
    texts again): they must be what the model it returns answers."""
    table = news(12, seed=3)
    tokens = TextTokens((encoder_folder() / TOKENIZER).read_text(), **SETTINGS)
    texts = table.column("text").to_pylist()
    y = np.repeat(np.arange(3), 12)
    rows = {"train": np.arange(0, 36, 2), "validation": np.arange(1, 36, 2)}
    feeds = {k: tokens.feed([texts[i] for i in r], "text") for k, r in rows.items()}
    model = TextClassifier(**SETTINGS, fine_tune_layers=tuned, fine_tune_epochs=1, max_epochs=20)
    model.fit(feeds, {k: y[r] for k, r in rows.items()}, 3, seed=0, deadline=math.inf)
    kept = model.validation_proba_
    assert kept.shape == (18, 3) and kept.dtype == np.float64
    np.testing.assert_allclose(kept, model.predict(feeds["validation"]), atol=1e-5)


def test_a_long_text_is_read_in_chunks_and_scores_the_same_in_any_batch(trained: Path) -> None:
    predictor = tandem.load("news", registry=Registry(Settings(home=trained)))
    long = " ".join(TOPICS["tech"]) + ". " + " ".join(TOPICS["tech"][:2])  # > 32 tokens
    short = "The striker scored twice"
    feed = predictor.encode({"text": [long, short]})
    ids, mask = feed["input_ids"], feed["attention_mask"]
    assert ids.shape[0] == 32 and ids.shape[1] == 2 and ids.shape[2] == 2  # tokens, chunks, rows
    assert mask[:, 1, 0].sum() > 0 and mask[:, 1, 1].sum() == 0  # the short text has one chunk
    together = predictor.predict({"text": [long, short, long]})
    # more texts than one ONNX Runtime call takes: run in parts, each trimmed, same answers
    many = [long, short] * 20
    parts = predictor.predict({"text": many})
    assert list(parts["label"]) == [together["label"][0], together["label"][1]] * 20
    np.testing.assert_allclose(parts["proba_tech"][:2], together["proba_tech"][:2], atol=1e-6)
    for i, text in enumerate([long, short, long]):
        alone = predictor.predict({"text": [text]})
        assert alone["label"][0] == together["label"][i]
        np.testing.assert_allclose(alone["proba_tech"][0], together["proba_tech"][i], atol=1e-6)


def test_serving_and_batch_take_texts_and_reject_empty_ones(trained: Path, tmp_path: Path) -> None:
    rows = [{"text": "Investors sold bonds as inflation rose"}, {"text": "   "},
            {"text": "A new laptop chip was released"}]  # fmt: skip
    source = tmp_path / "rows.csv"
    pacsv.write_csv(pa.table({"id": [1, 2, 3], "text": [r["text"] for r in rows]}), source)
    out = tmp_path / "scored.parquet"
    with Registry(Settings(home=trained)) as reg:
        result = run_batch("news", BatchOptions([source], out, keep=["id"], on_error="skip"),
                           registry=reg)  # fmt: skip
    assert result.rejected == 1
    scored = pq.read_table(out)
    assert scored.column("id").to_pylist() == [1, 3]
    assert scored.column("label").to_pylist() == ["money", "tech"]

    with running_server(["news"], trained) as server:
        body = json.dumps({"dataframe_records": [rows[0], rows[2]]}).encode()
        request = urllib.request.Request(f"{server.url}/invocations", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=20) as response:
            served = json.loads(response.read())["predictions"]
        bad = urllib.request.Request(f"{server.url}/invocations",
                                     json.dumps({"dataframe_records": [rows[1]]}).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=20)
        message = json.loads(refused.value.read())["message"]
    assert [r["label"] for r in served] == ["money", "tech"]
    assert refused.value.code == 400 and "is empty" in message


def test_a_served_text_model_imports_no_torch(trained: Path) -> None:
    code = (
        "import sys, tandem\n"
        "p = tandem.load('news')\n"
        "p.predict([{'text': 'The striker scored twice in the final'}])\n"
        "print(','.join(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=cli_env(trained))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_monitor_sees_texts_from_another_alphabet(trained: Path, tmp_path: Path) -> None:
    same, other = tmp_path / "same.csv", tmp_path / "other.csv"
    pacsv.write_csv(news(40, seed=3), same)
    greek = news(40, seed=4).column("text").to_pylist()
    # the same news in Greek letters: tokens the English vocabulary splits or does not know
    pacsv.write_csv(pa.table({"text": ["Ο επιθετικός σκόραρε δύο φορές στον τελικό " + t[:10] for t in greek],
                              "topic": news(40, seed=4).column("topic")}), other)  # fmt: skip
    with Registry(Settings(home=trained)) as reg:
        assert not check(reg, "news", current=same).drifted
        drifted = check(reg, "news", current=other).result.drifted_columns
    assert "text.unknown_share" in drifted or "text.tokens" in drifted, drifted


def test_the_kind_is_told_from_the_data_and_bad_text_is_named(
    registry: Registry, tmp_path: Path
) -> None:
    table = news(20)
    assert kind_of(table, "topic") == "text"
    with_number = table.append_column("length", pa.array(np.arange(table.num_rows)))
    assert kind_of(with_number, "topic") == "table"  # a text among features: a table model
    assert kind_of(with_number, "topic", ["length"]) == "text"
    with pytest.raises(DataError, match=r"leave out \['length'\] with --ignore"):
        tandem.train(with_number, target="topic", name="t", kind="text", registry=registry)
    holes = table.set_column(
        0, "text", pa.array([*table.column("text").to_pylist()[:-2], "", None])
    )
    with pytest.raises(DataError, match="are missing"):
        tandem.train(holes, target="topic", name="t", registry=registry, params=SETTINGS)
    with pytest.raises(ConfigError, match="text models classify"):
        tandem.train(table, target="topic", name="t", task="regression", registry=registry)
    with pytest.raises(ConfigError, match="max_tokens must be"):
        tandem.train(table, target="topic", name="t", params={"max_tokens": 4}, registry=registry)
    assert registry.list_models() == []


def test_a_predictor_refuses_what_is_not_text(trained: Path) -> None:
    predictor = tandem.load("news", registry=Registry(Settings(home=trained)))
    with pytest.raises(SchemaError, match="row 1 of column 'text' is 3"):
        predictor.predict({"text": ["fine", 3]})
    with pytest.raises(SchemaError, match="is empty"):
        predictor.predict([{"text": ""}])
