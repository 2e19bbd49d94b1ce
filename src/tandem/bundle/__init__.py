"""Bundles: the frozen, verified artifact that crosses from training to inference."""

from tandem.bundle.manifest import FORMAT_VERSION, FileEntry, Manifest
from tandem.bundle.store import Bundle, freeze, load_bundle, write_bundle

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "FileEntry",
    "Manifest",
    "freeze",
    "load_bundle",
    "write_bundle",
]
