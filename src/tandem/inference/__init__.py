"""Inference: the Predictor over a verified Bundle. Imports no training library."""

from tandem.inference.load import load
from tandem.inference.predictor import Predictor

__all__ = ["Predictor", "load"]
