"""Image preprocessing inside the graph: crop off the batch padding, resize, normalise.

The graph takes the decoded pixels of a batch, zero-padded to its largest image, as
``image`` (Hmax, Wmax, C, n) uint8 and each image's own (height, width) as ``image_size``
(2, n) (see :func:`tandem.data.images.image_feed`; rows on the last axis like every graph
input, so the server's batcher joins requests the same way). A ``Scan`` over the rows crops
each image to its size and resizes it alone (bilinear, antialiased) to the model's size, so an
image gives the same numbers whatever it is batched with. Then ``(x / 255 - mean) / std``
per channel, with the mean and spread of the training images, and the layout the network
wants, (n, C, H, W) float32.

Training runs this same graph part through ONNX Runtime to make the network's training
tensors, so what the network learns from is what it is served: resizing is not redone by
another library with other rounding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tandem.bundle.graph import GraphBuilder
from tandem.data.images import IMAGE_FEED, decode_images, image_feed
from tandem.inference.runtime import make_session

__all__ = ["IMAGE_INPUT", "IMAGE_SIZE_INPUT", "MAX_SIDE", "ImagePreprocessor"]

IMAGE_INPUT, IMAGE_SIZE_INPUT = IMAGE_FEED
#: the longest side the model sees unless ``image_size`` says otherwise
MAX_SIDE = 64
#: images per ONNX Runtime call when making training tensors
CHUNK = 512


@dataclass
class ImagePreprocessor:
    """Resize and normalise images for a network; see the module docstring.

    Attributes:
        channels: 1 (grey) or 3 (RGB).
        size: (height, width) the network sees.
    """

    channels: int
    size: tuple[int, int]
    column: str = IMAGE_INPUT
    mean_: np.ndarray = field(init=False, repr=False)
    std_: np.ndarray = field(init=False, repr=False)

    @classmethod
    def choose(
        cls, images: Sequence[np.ndarray], side: int | None = None, column: str = IMAGE_INPUT
    ) -> ImagePreprocessor:
        """The network's input size: ``side`` × ``side`` if given, else the most common size
        of ``images``, scaled down (keeping its shape) to :data:`MAX_SIDE` on its longer
        side."""
        channels = int(images[0].shape[2])
        if side is not None:
            return cls(channels, (side, side), column)
        (h, w), _ = Counter(im.shape[:2] for im in images).most_common(1)[0]
        scale = min(1.0, MAX_SIDE / max(h, w))
        return cls(channels, (max(1, round(h * scale)), max(1, round(w * scale))), column)

    def fit(self, images: Sequence[np.ndarray]) -> ImagePreprocessor:
        """Learn each channel's mean and spread over the resized training images."""
        resized = self._run(images, normalise=False)  # (n, C, H, W) in [0, 1]
        self.mean_ = resized.mean(axis=(0, 2, 3)).astype(np.float32)
        self.std_ = np.maximum(resized.std(axis=(0, 2, 3)), 1e-3).astype(np.float32)
        return self

    def features(self, columns: Mapping[str, Any]) -> np.ndarray:
        """The network's input for raw image values (bytes, base64 text or pixel arrays) in
        ``columns[self.column]``, decoded as the Predictor decodes them."""
        return self.transform(decode_images(columns[self.column], self.channels, self.column))

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The network's input for ``images``, (n, C, H, W) float32, computed by the graph."""
        return self._run(images, normalise=True)

    def _run(self, images: Sequence[np.ndarray], *, normalise: bool) -> np.ndarray:
        g = GraphBuilder("image_preprocessing")
        g.output(self._emit(g, normalise), "x", "float", [None, self.channels, *self.size])
        session = make_session(g.build().SerializeToString())
        parts = []
        for start in range(0, len(images), CHUNK):
            pixels, sizes = image_feed(images[start : start + CHUNK])
            parts.append(session.run(None, {IMAGE_INPUT: pixels, IMAGE_SIZE_INPUT: sizes})[0])
        return np.concatenate(parts).astype(np.float32)

    def to_onnx(self, g: GraphBuilder) -> str:
        """Emit the graph inputs and the preprocessing; returns the (n, C, H, W) float
        tensor the network takes."""
        return self._emit(g, normalise=True)

    def _emit(self, g: GraphBuilder, normalise: bool) -> str:
        pixels = g.input(IMAGE_INPUT, "uint8", [None, None, self.channels, None])
        sizes = g.input(IMAGE_SIZE_INPUT, "int64", [2, None])
        resized = g.node(
            "Scan",
            [pixels, sizes],
            num_scan_inputs=2,
            scan_input_axes=[3, 1],
            body=self._resize_one(),
        )  # fmt: skip  (n, H, W, C) float in [0, 255]
        scaled = g.node("Div", [resized, g.const(np.array(255.0, np.float32))])
        if normalise:
            scaled = g.node(
                "Div",
                [g.node("Sub", [scaled, g.const(self.mean_)]), g.const(self.std_)],
            )
        return g.node("Transpose", [scaled], perm=[0, 3, 1, 2])

    def _resize_one(self) -> Any:
        """The Scan body: one padded image (Hmax, Wmax, C) and its (height, width) in, the
        image cropped to its size and resized to :attr:`size` out, float."""
        consts = [
            numpy_helper.from_array(np.array([0, 0], np.int64), "zero"),
            numpy_helper.from_array(np.array([0, 1], np.int64), "axes"),
            numpy_helper.from_array(np.array(self.size, np.int64), "target"),
        ]
        nodes = [
            helper.make_node("Slice", ["img", "zero", "hw", "axes"], ["crop"]),
            helper.make_node("Cast", ["crop"], ["cropf"], to=TensorProto.FLOAT),
            helper.make_node(
                "Resize",
                ["cropf", "", "", "target"],
                ["resized"],
                mode="linear",
                antialias=1,
                axes=[0, 1],
            ),
        ]
        return helper.make_graph(
            nodes,
            "resize_one",
            [
                helper.make_tensor_value_info("img", TensorProto.UINT8, [None, None, None]),
                helper.make_tensor_value_info("hw", TensorProto.INT64, [2]),
            ],
            [helper.make_tensor_value_info("resized", TensorProto.FLOAT, [*self.size, None])],
            consts,
        )

    def state(self) -> dict[str, Any]:
        """What the Predictor and a reader need: the channels and size, and the fitted
        normalisation (as JSON)."""
        return {
            "channels": self.channels,
            "size": list(self.size),
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
        }
