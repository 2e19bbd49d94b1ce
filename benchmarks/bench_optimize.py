"""``tandem optimize`` on W1: int8, structured pruning and distillation, as the gate measures them.

Claim under test (issue goal): on the W1-style MLP, int8 is ≥ 1.5× faster (p50 latency at
batch 1 and throughput at batch 256) and loses ≤ 0.5 point of accuracy; the report says what
the CPU's features (VNNI or not) allow.

Model: W1 as in bench_serving (32 → 256 → ReLU → 256 → ReLU → 2, tandem's MLP), trained by
tandem on ``synthetic_classification`` (``--rows``, default 60,000) into a throw-away
registry. Baseline: the fp32 graph of the same Bundle, in ONNX Runtime, one intra-op thread,
measured by the gate in the same process in alternating rounds (``--rounds``, default 15) on
the version's test split. For each of ``int8-dynamic`` and ``int8-static`` (calibrated on the
Bundle's reference sample), structured pruning of 50 % and 75 % of each hidden layer
(fine-tuned), and distillation into a 64-wide student of W1 itself and of a GBDT trained by
tandem on the same rows: size, p50 at batch 1, rows/s at batch 256, accuracy, the rows whose
class changes between batch 1 and batch 256, and the seconds the technique took.

    PYTHONPATH=src python benchmarks/bench_optimize.py [--rounds 15] [--rows 60000]

(~5 min.) Results also go to ``benchmarks/out/bench_optimize.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

from _common import machine, synthetic_classification, temp_registry, text_table, write_json
from tandem.optimize import optimize
from tandem.optimize.quantize import cpu_features
from tandem.training.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--only", nargs="*", help="int8-dynamic, int8-static, prune, distill")
    args = parser.parse_args()
    features = cpu_features()
    print("CPU features: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in features.items()))
    x, y = synthetic_classification(np.random.default_rng(0), args.rows, 32)
    results = {}
    with temp_registry() as registry:
        folder = registry.settings.home
        data = folder / "w1.parquet"
        import pyarrow.parquet as pq

        pq.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(32)}, "y": y}), data)
        trained = train(data, target="y", name="w1", model="mlp", registry=registry,
                        params={"hidden": 256, "max_epochs": 30})  # fmt: skip
        print(
            f"trained {trained.version.ref}: test accuracy {trained.version.metrics['accuracy']:.4f}"
        )
        gbdt = train(data, target="y", name="w1gbdt", model="gbdt", registry=registry)
        print(f"trained {gbdt.version.ref}: test accuracy {gbdt.version.metrics['accuracy']:.4f}")
        techniques = {
            "int8-dynamic": ("w1:1", {"quantize_method": "int8-dynamic"}),
            "int8-static": ("w1:1", {"quantize_method": "int8-static"}),
            "prune 50%": ("w1:1", {"prune": 0.5}),
            "prune 75%": ("w1:1", {"prune": 0.75}),
            "distill W1 → 64": ("w1:1", {"distill": {"hidden": 64}}),
            "distill GBDT → 64": ("w1gbdt:1", {"distill": {"hidden": 64}}),
        }
        for label, (ref, how) in techniques.items():
            if args.only and label.split()[0] not in args.only:
                continue
            started = time.perf_counter()
            result = optimize(ref, rounds=args.rounds, registry=registry, **how)  # type: ignore[arg-type]
            spent = time.perf_counter() - started
            report = result.report
            results[label] = {**report.to_json(), "retrained": result.retrained, "seconds": spent}
            verdict = "accepted as " + result.version.ref if result.version else "refused"
            print(f"\n{label} of {ref}: {verdict} ({spent:.0f} s with the gate)")
            if result.retrained:
                print(f"  {result.retrained}")
            print(text_table(["", "before", "after", "change"], report.rows()))
            print(
                f"rows whose class differs between batch 1 and 256: {report.batch_dependent_rows}"
            )
            speed = min(1 / report.latency_ratio, report.throughput_ratio)
            goal = speed >= 1.5 and report.loss_points <= 0.5
            print(f"≥ 1.5× faster (both) at ≤ 0.5 pt: {1 / report.latency_ratio:.2f}× at batch 1, "
                  f"{report.throughput_ratio:.2f}× at batch 256, {report.loss_points:+.2f} pt: "
                  f"{'yes' if goal else 'no'}")  # fmt: skip
    path = write_json("bench_optimize", {"machine": machine(), "args": vars(args),
                                         "cpu": features, "results": results})  # fmt: skip
    print(f"\nresults in {path}")


if __name__ == "__main__":
    main()
