"""read_image_uint8: every PIL mode to 8-bit colour, EXIF orientation, errors naming the file."""

import numpy as np
import pytest
from PIL import Image

from clusterformer.utils.image_io import UnreadableImageError, read_image_uint8, to_uint8


def _photo(h: int = 30, w: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_round_trip_and_channel_order(tmp_path):
    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "a.png")
    assert np.array_equal(read_image_uint8(str(tmp_path / "a.png"), "RGB"), photo)
    bgr = read_image_uint8(str(tmp_path / "a.png"))
    assert bgr.flags["C_CONTIGUOUS"] and np.array_equal(bgr, photo[:, :, ::-1])


def test_grayscale_palette_and_rgba_become_rgb(tmp_path):
    photo = _photo()
    gray = Image.fromarray(photo).convert("L")
    gray.save(tmp_path / "g.png")
    out = read_image_uint8(str(tmp_path / "g.png"), "RGB")
    assert out.shape == (30, 50, 3) and np.array_equal(out[:, :, 0], np.asarray(gray))
    assert np.array_equal(out[:, :, 0], out[:, :, 2])
    rgba = np.dstack([photo, np.full((30, 50), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image_uint8(str(tmp_path / "a.png"), "RGB"), photo)
    Image.fromarray(photo).convert("P").save(tmp_path / "p.gif")
    assert read_image_uint8(str(tmp_path / "p.gif")).shape == (30, 50, 3)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(values).save(tmp_path / "g16.png")  # mode I;16
    out = read_image_uint8(str(tmp_path / "g16.png"), "RGB")
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


def test_wide_and_float_arrays():
    assert to_uint8(np.array([0, 100, 255], np.int32)).tolist() == [0, 100, 255]
    assert to_uint8(np.array([0, 514, 65535], np.int32)).tolist() == [0, 2, 255]
    assert to_uint8(np.array([0.0, 0.5, 1.0], np.float32)).tolist() == [0, 128, 255]
    assert to_uint8(np.array([-1.0, 1.0, np.nan], np.float32)).tolist() == [0, 255, 0]


def test_exif_orientation_is_applied(tmp_path):
    photo = np.zeros((20, 40, 3), np.uint8)
    photo[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(photo).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = read_image_uint8(str(tmp_path / "r.jpg"), "RGB")
    assert out.shape == (40, 20, 3)
    # Clockwise: the left half ends up on top.
    assert out[:15].mean() > 230 and out[25:].mean() < 25


def test_unreadable_files_name_themselves(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnreadableImageError, match="notes.txt"):
        read_image_uint8(str(tmp_path / "notes.txt"))
    Image.fromarray(_photo(200, 200)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:500])
    with pytest.raises(UnreadableImageError, match="cut.png"):
        read_image_uint8(str(tmp_path / "cut.png"))
    with pytest.raises(UnreadableImageError, match="nothere.png"):
        read_image_uint8(str(tmp_path / "nothere.png"))
    with pytest.raises(ValueError, match="format"):
        read_image_uint8(str(tmp_path / "full.png"), "HSV")
