"""Reading images and annotation PNGs for the mappers, with errors that name the files at fault."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from detectron2.data.detection_utils import SizeMismatchError

from ..image_io import path_manager, read_image


def read_image_file(file_name: str, image_format: Optional[str], role: str = "image") -> np.ndarray:
    """Read ``file_name`` with :func:`~clusterformer.data.image_io.read_image` (EXIF orientation
    applied; grey, RGBA, palette and 16-bit images mapped to correct 8-bit values).

    Returns:
        ``(H, W, C)`` uint8 in ``image_format`` ("BGR", "RGB", ...), or the file's own layout when
        ``image_format`` is None (``(H, W)`` for a single-channel label PNG).
    Raises:
        FileNotFoundError: the file does not exist; OSError: it exists but cannot be decoded
        (truncated, not an image) or has a pixel type without an 8-bit meaning. Both messages
        name ``role`` and the file.
    """
    if not path_manager().isfile(file_name):
        raise FileNotFoundError(f"The {role} file {file_name!r} does not exist")
    try:
        return read_image(file_name, format=image_format)
    except (OSError, ValueError) as error:  # both messages name the file
        raise OSError(f"Cannot read the {role} file: {error}") from error


def check_same_size(
    annotation: np.ndarray, annotation_file: str, image_hw: Tuple[int, int], image_file: str
) -> None:
    """Raise ``SizeMismatchError`` naming both files when an annotation PNG's size is not the image's."""
    annotation_hw = tuple(annotation.shape[:2])
    if annotation_hw != tuple(image_hw):
        raise SizeMismatchError(
            f"Annotation {annotation_file!r} has size (H, W)={annotation_hw}, but its image "
            f"{image_file!r} has size {tuple(image_hw)}; the annotation must match its image"
        )


def read_panoptic_png(file_name: str, image_hw: Tuple[int, int], image_file: str) -> np.ndarray:
    """Read a COCO-format panoptic PNG as ``(H, W, 3)`` uint8 RGB and check it matches the image."""
    panoptic_rgb = read_image_file(file_name, "RGB", role="panoptic annotation")
    check_same_size(panoptic_rgb, file_name, image_hw, image_file)
    return panoptic_rgb


def read_semantic_png(file_name: str, image_hw: Tuple[int, int], image_file: str) -> np.ndarray:
    """Read a semantic label PNG as ``(H, W)`` integer labels and check it matches the image.

    8-bit labels stay uint8 (so Detectron2 resizes them with PIL, like the image); wider ones are
    returned as float64, which Detectron2's transforms resize with nearest-neighbour torch ops.
    """
    labels = read_image_file(file_name, None, role="semantic annotation")
    if labels.ndim == 3:
        if labels.shape[2] != 1:
            raise ValueError(
                f"Semantic annotation {file_name!r} has {labels.shape[2]} channels; "
                "expected a single-channel label PNG"
            )
        labels = labels[:, :, 0]
    check_same_size(labels, file_name, image_hw, image_file)
    if labels.dtype != np.uint8:
        labels = labels.astype(np.float64)
    return labels


def panoptic_rgb_to_ids(panoptic_rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic encoding: segment id = R + 256 G + 256^2 B. ``(H, W, 3)`` -> ``(H, W)`` int64."""
    rgb = panoptic_rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
