"""The forward-pass runtime: one place that builds ONNX Runtime sessions."""

from __future__ import annotations

import onnxruntime as ort

from tandem.errors import BundleError, ConfigError

__all__ = ["make_session"]


def make_session(
    graph: bytes, *, threads: int | None = None, spin: bool = True
) -> ort.InferenceSession:
    """An inference session over a verified graph.

    Args:
        graph: serialized ONNX model.
        threads: intra-op threads; None lets ONNX Runtime use one per core.
        spin: let idle pool threads spin for the next call (faster back-to-back calls, but a
            core stays busy after each); a server waiting for requests turns it off.
    """
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1; got {threads}")
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own untyped errors
        raise BundleError(f"ONNX Runtime cannot load the model graph: {exc}") from exc
