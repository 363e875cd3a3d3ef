"""Reading image files into correct 8-bit arrays, whatever their mode (needs no detectron2).

Detectron2's ``read_image`` converts with ``PIL.Image.convert``, which *clips* 16-bit grey
images (mode ``I;16``) to 255: a 16-bit PNG comes out almost white. :func:`read_image` reads the
same way (EXIF orientation applied, the same formats) but maps every mode to 8 bits correctly:

=========================  =========================================================
file                        8-bit RGB / BGR / L result
=========================  =========================================================
8-bit grey, palette, CMYK   PIL's conversion (grey replicated to 3 channels)
RGBA, LA, PA                alpha dropped (colour kept as stored, not composited)
16-bit grey (``I;16*``)     ``value >> 8`` (the high byte, as PIL reads 16-bit RGB)
32-bit integer (``I``)      as 16-bit when every value is in 0..65535 (older Pillow opens
                            16-bit PNGs so), else ``ValueError``
float (``F``)               ``ValueError``: no agreed intensity range
=========================  =========================================================

With ``format=None`` the file's own values are returned untouched (label PNGs: a 16-bit label map
stays 16-bit). Undecodable or truncated files raise ``OSError`` naming the file.

Files are opened through :func:`path_manager` (Detectron2's ``PathManager`` where detectron2 is
installed, else iopath's), so paths served by a registered iopath handler (remote storage) work,
as they do with Detectron2's own loaders.

Every reader of the project goes through :func:`read_image`: the mappers through
:func:`read_image_file` (which tells a missing file from an undecodable one and names the file's
role), the demo, the predictor's users and the export tool through :func:`read_image_uint8`
(colour images only, one exception type to catch per file).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from iopath.common.file_io import PathManager as IopathPathManager
from PIL import Image, ImageOps

# PIL modes holding unsigned 16-bit samples.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def path_manager() -> IopathPathManager:
    """The ``PathManager`` that opens data files: Detectron2's (``detectron2.utils.file_io``,
    where Detectron2 users register their handlers) when detectron2 is installed, else iopath's
    global ``g_pathmgr`` (the model core runs without detectron2)."""
    try:
        from detectron2.utils.file_io import PathManager
    except ImportError:
        from iopath.common.file_io import g_pathmgr as PathManager
    return PathManager


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate / flip ``image`` as its EXIF orientation tag says (unchanged without one)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return image


def to_8bit(image: Image.Image, file_name: str) -> Image.Image:
    """Map a 16-bit or 32-bit integer grey image to mode ``L``; other modes pass unchanged."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.uint16)
    elif image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"Image {file_name!r} is a 32-bit integer image with values in "
                f"[{values.min()}, {values.max()}]; only 8- and 16-bit images are supported"
            )
        values = values.astype(np.uint16)
    elif image.mode == "F":
        raise ValueError(
            f"Image {file_name!r} has floating-point pixels (PIL mode 'F'); convert it to an "
            "8- or 16-bit image first"
        )
    else:
        return image
    return Image.fromarray((values >> 8).astype(np.uint8), mode="L")


def convert_to_format(image: Image.Image, format: Optional[str], file_name: str) -> np.ndarray:
    """A decoded PIL image -> ``(H, W, C)`` uint8 array in ``format`` ("RGB", "BGR", "L", or any
    PIL mode); ``None`` keeps the file's own values and layout."""
    if format is None:
        return np.array(image)  # a writable copy (PIL's buffer view is read-only)
    image = to_8bit(image, file_name)
    array = np.array(image.convert("RGB" if format == "BGR" else format))
    if array.ndim == 2:
        array = array[:, :, None]
    if format == "BGR":
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Read an image file with its EXIF orientation applied.

    Args:
        file_name: a local file or a path a handler of :func:`path_manager` serves.
        format: "RGB", "BGR", "L" (or another PIL mode): ``(H, W, C)`` uint8, every input mode
            mapped to 8 bits (see the module docstring). None: the file's own values (``(H, W)``
            for single-channel files), e.g. for label maps.

    Raises:
        OSError: the file cannot be opened or decoded (truncated, not an image); the message
            names the file. ValueError: a pixel type without an 8-bit meaning (float, wide int).
    """
    try:
        with path_manager().open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now: a truncated file fails here, not later in a transform
    except OSError as error:
        raise OSError(f"Cannot decode image file {file_name!r}: {error}") from error
    except Exception as error:  # PIL also raises ValueError / SyntaxError on some broken files
        raise OSError(f"Cannot decode image file {file_name!r}: {error!r}") from error
    return convert_to_format(apply_exif_orientation(image), format, file_name)


def read_image_file(file_name: str, format: Optional[str], role: str = "image") -> np.ndarray:
    """Read ``file_name`` with :func:`read_image`, naming ``role`` (e.g. "panoptic annotation")
    and the file in every error.

    Returns:
        ``(H, W, C)`` uint8 in ``format`` ("BGR", "RGB", ...), or the file's own layout when
        ``format`` is None (``(H, W)`` for a single-channel label PNG).
    Raises:
        FileNotFoundError: the file does not exist; OSError: it exists but cannot be decoded
        (truncated, not an image) or has a pixel type without an 8-bit meaning.
    """
    if not path_manager().isfile(file_name):
        raise FileNotFoundError(f"The {role} file {file_name!r} does not exist")
    try:
        return read_image(file_name, format=format)
    except (OSError, ValueError) as error:  # both messages name the file
        raise OSError(f"Cannot read the {role} file: {error}") from error


class UnreadableImageError(OSError):
    """The file does not exist, is not an image, or cannot be decoded (the message names it)."""


def read_image_uint8(file_name: str, format: str = "BGR") -> np.ndarray:
    """Read a user's image file as an ``(H, W, 3)`` uint8 array in ``format`` ("BGR" or "RGB").

    Raises:
        UnreadableImageError: the file is missing, not an image, truncated, corrupt, or has a
            pixel type without an 8-bit meaning (floating point, wide integers).
        ValueError: ``format`` is neither "BGR" nor "RGB".
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"read_image_uint8: format must be 'BGR' or 'RGB', got {format!r}")
    try:
        return read_image_file(file_name, format)
    except OSError as error:  # FileNotFoundError included; the message names the file
        raise UnreadableImageError(str(error)) from error
