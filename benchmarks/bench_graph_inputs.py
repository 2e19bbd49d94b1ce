"""Why the Bundle graph takes column-major matrices: the costs behind the input layout.

Two measurements, each layout beside its alternative in the same run:

1. ONNX Runtime's per-call cost of a graph with one (n, 1) input per column against the same
   graph fed one matrix, for 1, 8 and 32 columns at batch 1 (a Concat/Transpose and a Mul:
   the model itself costs nothing here, so the difference is the inputs).
2. numpy's cost of stacking k one-dimensional columns into the graph's matrix: as rows of a
   (k, n) matrix (``np.array``) against as columns of an (n, k) one (``np.stack(axis=1)``).

Run from the repository root:

    PYTHONPATH=src python benchmarks/bench_graph_inputs.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, text_table, write_json
from tandem.bundle.graph import GraphBuilder

SCRIPT = "bench_graph_inputs"


def _session(k: int, per_column: bool) -> ort.InferenceSession:
    g = GraphBuilder("inputs")
    if per_column:
        inputs = [g.input(f"c{i}", "double", [None, 1]) for i in range(k)]
        x = g.node("Concat", inputs, axis=1) if k > 1 else inputs[0]
    else:
        x = g.node("Transpose", [g.input("x", "double", [k, None])], perm=[1, 0])
    g.output(g.node("Mul", [x, g.const(np.array(2.0))]), "y", "double", [None, k])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        g.build().SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _best_us(fn: object, number: int, repeat: int = 5) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per measurement")
    args = parser.parse_args(argv)
    calls = 2000 if args.quick else 20000
    rng = np.random.default_rng(0)

    inputs_rows, inputs = [], []
    for k in (1, 8, 32):
        cols = [rng.random(1) for _ in range(k)]
        per_col, matrix = _session(k, True), _session(k, False)
        a = _best_us(
            lambda s=per_col, cs=cols: s.run(
                ["y"], {f"c{i}": c.reshape(-1, 1) for i, c in enumerate(cs)}
            ),
            calls,
        )
        b = _best_us(lambda s=matrix, cs=cols: s.run(["y"], {"x": np.array(cs)}), calls)
        inputs.append({"columns": k, "per_column_us": a, "matrix_us": b})
        inputs_rows.append([str(k), f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}"])
    print("ONNX Runtime call at batch 1, µs (each includes building its feed from the columns)\n")
    print(text_table(["columns", "one input per column", "one matrix", "ratio"], inputs_rows))

    stack_rows, stacking = [], []
    for n in (1, 64, 4096):
        cols = [rng.random(n) for _ in range(32)]
        number = calls if n < 4096 else max(50, calls // 40)
        by_rows = _best_us(lambda cs=cols: np.array(cs), number)
        by_cols = _best_us(lambda cs=cols: np.stack(cs, axis=1), number)
        stacking.append({"rows": n, "column_major_us": by_rows, "row_major_us": by_cols})
        stack_rows.append([str(n), f"{by_rows:.1f}", f"{by_cols:.1f}", f"{by_cols / by_rows:.2f}"])
    print("\nStacking 32 float64 columns of n values, µs\n")
    print(
        text_table(["n", "np.array -> (32, n)", "np.stack(axis=1) -> (n, 32)", "ratio"], stack_rows)
    )

    path = write_json(SCRIPT, {"machine": machine(), "inputs": inputs, "stacking": stacking})
    print(f"\nresults in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
