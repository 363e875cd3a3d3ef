"""Reading arbitrary image files as 8-bit colour arrays (for the demo and the predictor's users).

Detectron2's ``read_image`` covers the training data; user photos are more varied: grayscale,
palette, RGBA, 16-bit or float images and phone JPEGs whose orientation lives in EXIF. This reader
applies the EXIF orientation (as Detectron2 does), converts every mode to 8-bit RGB and raises
:class:`UnreadableImageError` naming the file when it is not an image or cannot be decoded.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

# PIL modes holding more than 8 bits per sample (16-bit PNG/TIFF open as one of these).
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class UnreadableImageError(OSError):
    """The file does not exist, is not an image, or cannot be decoded (the message names it)."""


def read_image_uint8(file_name: str, format: str = "BGR") -> np.ndarray:
    """Read ``file_name`` as an ``(H, W, 3)`` uint8 array in ``format`` ("BGR" or "RGB").

    EXIF orientation is applied (the result has the displayed size). Grayscale and palette images
    are expanded to three channels, the alpha channel is dropped, and images with more than
    8 bits per sample are scaled to 0..255 (16-bit: ``v / 257``; wider integer or float images:
    by their value range). Multi-frame files (GIF, TIFF) give their first frame.

    Raises:
        UnreadableImageError: the file is missing, not an image, truncated or corrupt.
        ValueError: ``format`` is neither "BGR" nor "RGB".
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"read_image_uint8: format must be 'BGR' or 'RGB', got {format!r}")
    if not os.path.isfile(file_name):
        raise UnreadableImageError(f"{file_name!r} is not a file")
    try:
        with Image.open(file_name) as image:
            image = ImageOps.exif_transpose(image)
            rgb = pil_to_rgb_uint8(image)
    except UnreadableImageError:
        raise
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBomb...
        raise UnreadableImageError(f"Cannot read {file_name!r} as an image: {error}") from error
    return np.ascontiguousarray(rgb[:, :, ::-1]) if format == "BGR" else rgb


def pil_to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL image -> ``(H, W, 3)`` uint8 RGB (see :func:`read_image_uint8` for the rules)."""
    if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
        gray = to_uint8(np.asarray(image), image.mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, LA, P, PA, RGBA, CMYK, YCbCr, 1, ...
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def to_uint8(values: np.ndarray, mode: str = "") -> np.ndarray:
    """Scale a wide single-channel array to uint8: 16-bit modes by ``1/257`` (65535 -> 255);
    other integer arrays as 8-bit if they fit, else as 16-bit if they fit, else by their range;
    float arrays in [0, 1] by 255, else by their range."""
    values = np.asarray(values)
    if mode.startswith("I;16"):
        return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if values.dtype.kind in "iu" and low >= 0 and high <= 255:
        return values.astype(np.uint8)
    if values.dtype.kind in "iu" and low >= 0 and high <= 65535:
        return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)
    if values.dtype.kind == "f" and low >= 0 and high <= 1:
        scaled = values * 255.0
    else:
        scaled = (values.astype(np.float64) - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.nan_to_num(np.round(scaled)), 0, 255).astype(np.uint8)
