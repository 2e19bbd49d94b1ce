"""Write a Bundle to disk and read it back, verifying every byte.

A Bundle is a directory: ``model.onnx`` (preprocessing + model in one graph) and
``manifest.json`` (signature, metrics, statistics, and the SHA-256 of every other file).
Writing puts the graph first and the manifest last, so a directory without a manifest is
never mistaken for a Bundle. Loading reads each file once, hashes those bytes and hands the
same bytes on, so what was verified is what runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tandem.bundle.manifest import GRAPH, MANIFEST, FileEntry, Manifest
from tandem.errors import BundleError

__all__ = ["Bundle", "freeze", "load_bundle", "write_bundle"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified Bundle in memory.

    Attributes:
        path: the directory it was read from.
        manifest: the parsed manifest.
        graph: the bytes of ``model.onnx``, already checked against the manifest.
        digest: SHA-256 of ``manifest.json``; the registry keeps it, so a changed manifest is
            caught too.
    """

    path: Path
    manifest: Manifest
    graph: bytes
    digest: str
    #: the other files the manifest lists (a reference sample), verified like the graph
    extras: Mapping[str, bytes] = field(default_factory=dict)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bundle(
    directory: Path, manifest: Manifest, graph: bytes, extras: Mapping[str, bytes] | None = None
) -> str:
    """Write a Bundle into an existing empty ``directory``; returns the manifest digest.
    ``extras``: more files by name (plain names, no folders), hashed like the graph."""
    files = {GRAPH: graph, **(extras or {})}
    for name, data in files.items():
        if Path(name).name != name or name == MANIFEST:
            raise BundleError(
                f"a Bundle file needs a plain name other than {MANIFEST}; got {name!r}"
            )
        _write_file(directory / name, data)
    manifest = replace(manifest, files={n: FileEntry(_sha256(d), len(d)) for n, d in files.items()})
    raw = manifest.dumps()
    _write_file(directory / MANIFEST, raw)
    return _sha256(raw)


def freeze(path: str | Path, manifest: Manifest, graph: bytes) -> str:
    """Write a Bundle to a new directory ``path`` atomically: all of it or nothing.

    Example:
        >>> digest = freeze("out/fraud-bundle", manifest, graph)  # doctest: +SKIP
    """
    target = Path(path)
    if target.exists():
        raise BundleError(f"'{target}' already exists: choose a new path or remove it first")
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(parents=True)
    try:
        digest = write_bundle(staging, manifest, graph)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return digest


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(
            f"Bundle file '{what}' is missing from {path.parent}: the Bundle is incomplete"
        ) from exc
    except OSError as exc:
        raise BundleError(f"cannot read Bundle file '{what}' in {path.parent}: {exc}") from exc


def load_bundle(path: str | Path, *, expected_digest: str | None = None) -> Bundle:
    """Read and verify a Bundle.

    Args:
        path: the Bundle directory.
        expected_digest: the SHA-256 the registry recorded for ``manifest.json``, if known.

    Raises:
        BundleError: naming the file that is missing, truncated or altered.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"no Bundle at '{root}': the directory does not exist")
    raw = _read(root / MANIFEST, MANIFEST)
    digest = _sha256(raw)
    if expected_digest is not None and digest != expected_digest:
        raise BundleError(
            f"Bundle file '{MANIFEST}' in {root} was altered: its SHA-256 differs from the registry's record"
        )
    manifest = Manifest.loads(raw, str(root))
    if GRAPH not in manifest.files:
        raise BundleError(f"{root}/{MANIFEST} does not list '{GRAPH}': the Bundle is damaged")
    contents: dict[str, bytes] = {}
    for name, entry in manifest.files.items():
        if Path(name).name != name:
            raise BundleError(
                f"{root}/{MANIFEST} lists the file '{name}' outside the Bundle directory: refusing it"
            )
        data = _read(root / name, name)
        if len(data) != entry.bytes:
            raise BundleError(
                f"Bundle file '{name}' in {root} is truncated or padded: {len(data)} bytes, expected {entry.bytes}"
            )
        if _sha256(data) != entry.sha256:
            raise BundleError(
                f"Bundle file '{name}' in {root} was altered: its SHA-256 does not match the manifest"
            )
        contents[name] = data
    graph = contents.pop(GRAPH)
    return Bundle(path=root, manifest=manifest, graph=graph, digest=digest, extras=contents)
