from __future__ import annotations

import subprocess
import sys

import tandem
from tests.helpers import ROOT


def test_public_names_are_exactly_these() -> None:
    assert sorted(tandem.__all__) == sorted(
        [
            "Bundle", "BundleError", "ConfigError", "DataError", "Manifest", "ModelVersion",
            "NotFoundError", "Predictor", "Registry", "RegistryError", "SchemaError", "Settings",
            "TandemError", "TrainResult", "TrainingError", "UsageError", "__version__", "freeze",
            "load", "load_bundle", "train",
        ]
    )  # fmt: skip
    for name in tandem.__all__:
        assert getattr(tandem, name) is not None


def _python(code: str) -> str:
    env = {"PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def test_inference_imports_no_training_library() -> None:
    """A serving process must not pay for torch, scikit-learn or LightGBM."""
    heavy = "('torch', 'sklearn', 'lightgbm', 'onnx', 'pandas')"
    loaded = f"print(','.join(sorted(m for m in {heavy} if m in sys.modules)))"
    assert _python(f"import sys, tandem.inference, tandem\ntandem.load\n{loaded}") == ""
    serving = "tandem.serving, tandem.serving.app, tandem.serving.asgi, tandem.serving.mlflow"
    serving += ", tandem.batch"
    assert _python(f"import sys, {serving}\n{loaded}") == ""
    # the CLI too: `tandem predict` and `tandem models` start without the training stack
    assert _python(f"import sys, tandem.cli\n{loaded}") == ""
    # and the training side really does load them, so the check above can fail
    assert (
        _python(f"import sys, tandem\ntandem.train\n{loaded}")
        == "lightgbm,onnx,pandas,sklearn,torch"
    )
