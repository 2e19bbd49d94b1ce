"""The pretrained text encoder: offline, exported whole to ONNX, padding-proof, quantizable."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tandem.inference.runtime import make_session
from tandem.models.text import TextEncoder, export_text_model, tokenize, tokenizer
from tandem.optimize.quantize import _per_channel, quantize

TEXTS = [
    "Shares fell sharply after the central bank raised interest rates.",
    "The striker scored twice in the second half.",
    "A new phone with a folding screen goes on sale next month, the company said in a "
    "statement that also promised longer battery life and a faster chip.",
]


@pytest.fixture(scope="module")
def model() -> tuple[TextEncoder, nn.Module, bytes]:
    torch.manual_seed(0)
    encoder = TextEncoder.pretrained()
    head = nn.Linear(encoder.width, 4)
    return encoder, head, export_text_model(encoder, head)


@pytest.mark.slow
def test_the_graph_computes_what_the_encoder_and_head_do(
    model: tuple[TextEncoder, nn.Module, bytes],
) -> None:
    encoder, head, graph = model
    feed = tokenize(tokenizer(), TEXTS)
    with torch.no_grad():
        expected = torch.softmax(head(encoder(*map(torch.from_numpy, feed.values()))), dim=1)
    got = make_session(graph).run(["y"], feed)[0]
    assert got.dtype == np.float64 and got.shape == (3, 4)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    # sentence-transformers' embedding: unit length, and similar topics closer than others
    with torch.no_grad():
        pairs = tokenize(
            tokenizer(), ["stock markets tumbled", "shares dropped", "a football match"]
        )
        e = encoder(*map(torch.from_numpy, pairs.values())).numpy()
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]


@pytest.mark.slow
def test_a_text_gets_the_same_answer_alone_or_padded_in_a_batch(
    model: tuple[TextEncoder, nn.Module, bytes],
) -> None:
    _, _, graph = model
    session, tok = make_session(graph), tokenizer()
    together = session.run(["y"], tokenize(tok, TEXTS))[0]
    for i, text in enumerate(TEXTS):  # the short ones were padded to the longest
        alone = session.run(["y"], tokenize(tok, [text]))[0]
        np.testing.assert_allclose(alone[0], together[i], atol=1e-6)


def test_long_texts_are_cut_to_the_token_budget() -> None:
    feed = tokenize(tokenizer(max_tokens=16), ["word " * 500, "short"])
    assert feed["input_ids"].shape == (2, 16)
    assert feed["attention_mask"].tolist()[1] == [1, 1, 1] + [0] * 13  # [CLS] short [SEP]


@pytest.mark.slow
def test_int8_keeps_the_text_models_answers_and_quarters_its_size(
    model: tuple[TextEncoder, nn.Module, bytes],
) -> None:
    _, _, graph = model
    assert _per_channel(onnx.load_from_string(graph), None)  # deep: per-channel scales
    small = quantize(graph, "int8-dynamic")
    assert len(small) < 0.3 * len(graph)  # the token table is int8 too
    feed = tokenize(tokenizer(), TEXTS)
    before = make_session(graph).run(["y"], feed)[0]
    after = make_session(small).run(["y"], feed)[0]
    np.testing.assert_allclose(after, before, atol=0.05)
