"""Images: read an image folder into a table, and decode image bytes into pixels.

An **image folder** holds one sub-folder per class, named after it, with the class's images
inside (PNG, JPEG, BMP, GIF, WebP, TIFF)::

    catalog/
      shoes/  001.jpg 002.jpg ...
      bags/   a.png ...

:func:`read_image_folder` turns it into a table of ``image`` (the file's bytes), ``class``
(the sub-folder) and ``path`` (relative to the folder), so an image dataset splits, trains,
batch-scores and logs like any table. Decoding is :func:`decode_images`: Pillow turns bytes
into ``uint8`` pixels (height, width, channels); resizing and normalising happen inside the
Bundle's graph, so training and serving share them exactly. Pillow is the one image library
here, and the Predictor imports it only when a model takes images.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tandem.errors import DataError, SchemaError

__all__ = [
    "CLASS",
    "IMAGE_FEED",
    "IMAGE_STATISTICS",
    "IMAGE_SUFFIXES",
    "blank_png",
    "decode_images",
    "feed_statistics",
    "image_channels",
    "image_feed",
    "image_files",
    "image_statistics",
    "image_table",
    "is_image_folder",
    "read_image_folder",
    "readable_image",
    "statistics_columns",
    "write_digits_folder",
]

#: the column of an image folder's class (its sub-folder); not ``label``, which a model's
#: predictions are named, so a batch job can keep both side by side
CLASS = "class"
#: the graph inputs of an image model: padded pixels and each image's (height, width)
IMAGE_FEED = ("image", "image_size")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: the largest image the Predictor decodes (pixels): a decompression bomb is refused
MAX_PIXELS = 40_000_000


def _images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def image_files(path: str | Path) -> tuple[list[Path], bool]:
    """The images of an image folder, in name order, and whether they sit in class
    sub-folders (labelled) or directly in the folder (unlabelled: to score or monitor).

    Raises:
        DataError: the folder holds no images, mixes loose images with class folders, or
            has a class folder without images.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder: an image dataset is a folder of class folders")
    loose = _images_in(root)
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    inside = {d.name: _images_in(d) for d in classes}
    if loose and any(inside.values()):
        raise DataError(
            f"'{root}' holds images both loose and in sub-folders: keep one sub-folder per "
            "class (to train), or only loose images (to score)"
        )
    if loose:
        return loose, False
    empty = [name for name, files in inside.items() if not files]
    if not inside or len(empty) == len(inside):
        raise DataError(
            f"'{root}' holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, loose "
            "or in class sub-folders)"
        )
    if empty:
        raise DataError(
            f"class folder(s) {empty} in '{root}' hold no images: add images or remove them"
        )
    return [f for files in inside.values() for f in files], True


def is_image_folder(path: str | Path) -> bool:
    """Whether ``path`` is meant as a folder of images: it holds images, loose or in
    sub-folders (:func:`image_files` then says what is wrong with it, if anything)."""
    root = Path(path)
    if not root.is_dir():
        return False
    if _images_in(root):
        return True
    return any(_images_in(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def image_table(root: Path, files: Sequence[Path], labelled: bool) -> pa.Table:
    """``files`` (under ``root``) as rows of ``image`` (the bytes), ``path`` (relative) and,
    when ``labelled``, ``class`` (the class folder)."""
    columns = {
        "image": pa.array([f.read_bytes() for f in files], pa.binary()),
        "path": pa.array([f.relative_to(root).as_posix() for f in files], pa.string()),
    }
    if labelled:
        columns[CLASS] = pa.array([f.parent.name for f in files], pa.string())
    return pa.table(columns)


def read_image_folder(path: str | Path) -> pa.Table:
    """The images under ``path`` as a table of ``image`` (bytes), ``path`` (relative) and,
    for class sub-folders, ``class`` (the sub-folder's name), in name order.

    Raises:
        DataError: see :func:`image_files`.
    """
    files, labelled = image_files(path)
    return image_table(Path(path), files, labelled)


def _as_bytes(value: Any, column: str, row: int) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):  # base64, as JSON carries bytes
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SchemaError(
                f"row {row} of column '{column}' is text that is not base64: send the image's "
                "bytes base64-encoded"
            ) from None
    if value is None:
        raise SchemaError(f"row {row} of column '{column}' has no image")
    raise SchemaError(
        f"row {row} of column '{column}' is a {type(value).__name__}: send image file bytes "
        "(PNG, JPEG, ...), base64-encoded in JSON"
    )


def decode_images(
    values: Any, channels: int, column: str = "image", *, names: Sequence[str] | None = None
) -> list[np.ndarray]:
    """Image file bytes (or base64 text, or uint8 pixel arrays) as uint8 arrays of shape
    (height, width, ``channels``): 1 for grey, 3 for RGB (transparency composited on white).

    Raises:
        SchemaError: a value is not an image Pillow can read, naming the row (or its entry
            in ``names``, e.g. the file it was read from).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_pylist()
    out = []
    for row, value in enumerate(values):
        if isinstance(value, np.ndarray):
            out.append(_pixels_array(value, channels, column, row))
            continue
        raw = _as_bytes(value, column, row)
        try:
            with Image.open(io.BytesIO(raw)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise SchemaError(
                        f"row {row} of column '{column}' is {image.width}×{image.height} pixels, "
                        f"over the {MAX_PIXELS:,} tandem decodes: send it smaller"
                    )
                out.append(_pixels(image, channels))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            where = f"'{names[row]}'" if names else f"row {row} of column '{column}'"
            why = (
                f"{len(raw)} bytes of no known image format"
                if isinstance(exc, UnidentifiedImageError)
                else str(exc)
            )
            raise SchemaError(
                f"{where} is not an image tandem can read ({why}); "
                "use PNG, JPEG, BMP, GIF, WebP or TIFF"
            ) from None
    return out


def readable_image(value: Any, column: str, row: int) -> str | None:
    """Why ``value`` is not an image, from its header alone (cheap), or None when it looks
    like one; for checking a batch row by row before decoding it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(_as_bytes(value, column, row))):
            return None
    except SchemaError as exc:
        return str(exc)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return f"row {row} of column '{column}' is not an image tandem can read"


def blank_png() -> bytes:
    """A 1×1 grey PNG: stands in for a bad row's image so the rest of its chunk scores."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1), 128).save(buffer, format="PNG")
    return buffer.getvalue()


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def image_channels(values: Any, column: str = "image") -> int:
    """1 when every image is grey, else 3 (reading headers only)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_pylist()
    for row, value in enumerate(values):
        try:
            with Image.open(io.BytesIO(_as_bytes(value, column, row))) as image:
                if image.mode not in GREY_MODES:
                    return 3
        except (UnidentifiedImageError, OSError, ValueError):
            continue  # decode_images names it
    return 1


def _pixels(image: Any, channels: int) -> np.ndarray:
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def _pixels_array(value: np.ndarray, channels: int, column: str, row: int) -> np.ndarray:
    shape = value.shape
    if value.ndim == 2 and channels == 1:
        value = value[:, :, None]
    if value.ndim != 3 or value.shape[2] != channels or value.dtype != np.uint8:
        raise SchemaError(
            f"row {row} of column '{column}' is a {value.dtype} array of shape {shape}: pixels "
            f"must be uint8 of shape (height, width, {channels})"
        )
    return value


def image_feed(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images as the graph takes them, rows on the last axis: the pixels zero-padded
    to the largest height and width (Hmax, Wmax, C, n) and each image's (height, width)
    (2, n); the graph crops each back to its own size before resizing it."""
    n = len(images)
    if n == 0:
        return np.zeros((1, 1, 1, 0), np.uint8), np.zeros((2, 0), np.int64)
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int64).T
    height, width = int(sizes[0].max()), int(sizes[1].max())
    feed = np.zeros((height, width, images[0].shape[2], n), dtype=np.uint8)
    for i, im in enumerate(images):
        feed[: im.shape[0], : im.shape[1], :, i] = im
    return feed, sizes


#: what monitoring compares of images, per image (they have no columns of their own)
IMAGE_STATISTICS = ("width", "height", "brightness", "contrast")


def image_statistics(images: Sequence[np.ndarray], column: str = "image") -> dict[str, np.ndarray]:
    """Per-image numbers that drift when the pictures change (a new camera, lighting, crop):
    ``<column>.width`` and ``.height`` in pixels, ``.brightness`` (mean pixel value, 0–255)
    and ``.contrast`` (its standard deviation)."""
    stats = np.array(
        [(im.shape[1], im.shape[0], im.mean(), im.std()) for im in images], dtype=np.float64
    ).reshape(-1, len(IMAGE_STATISTICS))
    return statistics_columns(stats, column)


def feed_statistics(pixels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """:func:`image_statistics` of a graph feed (see :func:`image_feed`), as an
    (n, 4) matrix: each image is cropped back to its own size first."""
    n = sizes.shape[1]
    out = np.empty((n, len(IMAGE_STATISTICS)), dtype=np.float64)
    for i in range(n):
        h, w = int(sizes[0, i]), int(sizes[1, i])
        crop = pixels[:h, :w, :, i]
        out[i] = (w, h, crop.mean(), crop.std())
    return out


def statistics_columns(stats: np.ndarray, column: str) -> dict[str, np.ndarray]:
    """An (n, 4) matrix of image statistics as the named columns monitoring compares."""
    return {f"{column}.{name}": stats[:, j] for j, name in enumerate(IMAGE_STATISTICS)}


def write_digits_folder(path: str | Path) -> Path:
    """scikit-learn's bundled digits (1,797 8×8 grey images, ten classes) written as an image
    folder of PNGs: an image dataset that ships with an installed package."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(path)
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        grey = np.round(pixels * (255 / 16)).astype(np.uint8)
        Image.fromarray(grey).save(folder / f"{i:04d}.png")
    return root
