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


def test_inference_imports_no_training_library() -> None:
    """A serving process must not pay for torch, scikit-learn or LightGBM."""
    code = (
        "import sys, tandem.inference, tandem\n"
        "tandem.load\n"
        "heavy = sorted(m for m in ('torch', 'sklearn', 'lightgbm', 'onnx', 'pandas') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "src")},
    )
    assert result.stdout.strip() == ""
    # and the training side really does load them, so the check above can fail
    code_train = "import sys, tandem\ntandem.train\nprint('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code_train],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "src")},
    )
    assert out.stdout.strip() == "True"
