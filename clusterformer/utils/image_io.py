"""Reading user images for the demo and the predictor, with one exception type naming the file.

The decoding rules (EXIF orientation, grey / palette / RGBA / 16-bit images mapped to correct 8-bit
values) live in :mod:`clusterformer.data.image_io`, shared with the training data; this module only
narrows them to colour images and to a single error type the demo can catch per file.
"""

from __future__ import annotations

import numpy as np

from ..data.image_io import path_manager, read_image


class UnreadableImageError(OSError):
    """The file does not exist, is not an image, or cannot be decoded (the message names it)."""


def read_image_uint8(file_name: str, format: str = "BGR") -> np.ndarray:
    """Read ``file_name`` as an ``(H, W, 3)`` uint8 array in ``format`` ("BGR" or "RGB").

    Raises:
        UnreadableImageError: the file is missing, not an image, truncated, corrupt, or has a
            pixel type without an 8-bit meaning (floating point, wide integers).
        ValueError: ``format`` is neither "BGR" nor "RGB".
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"read_image_uint8: format must be 'BGR' or 'RGB', got {format!r}")
    if not path_manager().isfile(file_name):
        raise UnreadableImageError(f"{file_name!r} is not a file")
    try:
        return read_image(file_name, format)
    except (OSError, ValueError) as error:  # both messages already name the file
        raise UnreadableImageError(str(error)) from error
