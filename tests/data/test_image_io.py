"""Image files of every kind read as correct 8-bit arrays, or fail naming the file."""

import numpy as np
import pytest
from PIL import Image

from clusterformer.data.image_io import (
    UnreadableImageError,
    read_image,
    read_image_file,
    read_image_uint8,
)

EXIF_ORIENTATION = 0x0112


def gradient(height=6, width=10, channels=3):
    """An image whose every pixel differs, so rotations and channel swaps show."""
    values = np.arange(height * width * channels, dtype=np.int64).reshape(height, width, channels)
    return (values * 7 % 256).astype(np.uint8)


def test_rgb_bgr_and_grey(tmp_path):
    rgb = gradient()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgb.png"), "RGB"), rgb)
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgb.png"), "BGR"), rgb[:, :, ::-1])

    grey = gradient(channels=1)[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    out = read_image(str(tmp_path / "grey.png"), "RGB")
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(read_image(str(tmp_path / "grey.png"), "L")[:, :, 0], grey)


def test_rgba_and_palette_drop_alpha_and_keep_colours(tmp_path):
    rgba = np.concatenate([gradient(), np.full((6, 10, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgba.png"), "RGB"), rgba[:, :, :3])

    palette_image = Image.fromarray(gradient()).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette_image.save(tmp_path / "palette.png")
    expected = np.asarray(palette_image.convert("RGB"))
    np.testing.assert_array_equal(
        read_image(str(tmp_path / "palette.png"), "BGR"), expected[:, :, ::-1]
    )


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 255, 256, 1000], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    out = read_image(str(tmp_path / "grey16.png"), "RGB")
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    # The high byte, as PIL reads 16-bit colour PNGs; Detectron2's reader gives 0, 255, 255, ...
    np.testing.assert_array_equal(out[:, :, 0], [[0, 0, 1, 3], [128, 156, 255, 255]])
    assert (out == out[:, :, :1]).all()
    # Label maps (format None) keep their 16-bit values.
    np.testing.assert_array_equal(read_image(str(tmp_path / "grey16.png"), None), values)


def test_16_bit_colour_png(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rgb16 = (gradient().astype(np.uint16) * 257 + 100).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[:, :, ::-1])
    np.testing.assert_array_equal(
        read_image(str(tmp_path / "rgb16.png"), "RGB"), (rgb16 >> 8).astype(np.uint8)
    )


def test_32_bit_integer_images(tmp_path):
    in_range = np.array([[0, 65535], [256, 512]], dtype=np.int32)
    Image.fromarray(in_range, mode="I").save(tmp_path / "int32.tif")
    np.testing.assert_array_equal(
        read_image(str(tmp_path / "int32.tif"), "L")[:, :, 0], [[0, 255], [1, 2]]
    )
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I").save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"wide\.tif.*32-bit"):
        read_image(str(tmp_path / "wide.tif"), "RGB")
    Image.fromarray(np.zeros((2, 2), np.float32), mode="F").save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif.*floating-point"):
        read_image(str(tmp_path / "float.tif"), "RGB")


@pytest.mark.parametrize(
    "orientation, undo",
    [
        (1, lambda a: a),
        (2, np.fliplr),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # camera turned: displayed rotated 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, undo):
    stored = np.zeros((6, 10, 3), np.uint8)
    stored[0, 0] = 255  # one white corner (PNG: lossless, so pixels compare exactly)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(tmp_path / "rotated.png", exif=exif.tobytes())
    out = read_image(str(tmp_path / "rotated.png"), "RGB")
    np.testing.assert_array_equal(out, undo(stored))


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    (tmp_path / "text.jpg").write_bytes(b"not an image at all")
    with pytest.raises(OSError, match=r"text\.jpg"):
        read_image(str(tmp_path / "text.jpg"), "RGB")
    for suffix in ("png", "jpg"):
        path = tmp_path / f"full.{suffix}"
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(
            path
        )
        data = path.read_bytes()
        truncated = tmp_path / f"truncated.{suffix}"
        truncated.write_bytes(data[: len(data) // 2])
        with pytest.raises(OSError, match=rf"truncated\.{suffix}"):
            read_image(str(truncated), "RGB")
    with pytest.raises(OSError, match=r"missing\.png"):
        read_image(str(tmp_path / "missing.png"), "RGB")


def test_demo_reader_gives_three_channels_and_one_error_type(tmp_path):
    grey = gradient(channels=1)[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    out = read_image_uint8(str(tmp_path / "grey.png"), "BGR")
    assert out.shape == (6, 10, 3) and out.flags["C_CONTIGUOUS"]
    (tmp_path / "notes.txt").write_text("hello")
    Image.fromarray(np.zeros((2, 2), np.float32), mode="F").save(tmp_path / "float.tif")
    for name in ("notes.txt", "float.tif", "nothere.png"):
        with pytest.raises(UnreadableImageError, match=name.replace(".", r"\.")):
            read_image_uint8(str(tmp_path / name))
    with pytest.raises(ValueError, match="format"):
        read_image_uint8(str(tmp_path / "grey.png"), "HSV")


def test_the_mappers_reader_names_the_role_and_tells_missing_from_undecodable(tmp_path):
    rgb = gradient()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(
        read_image_file(str(tmp_path / "rgb.png"), "BGR"), rgb[:, :, ::-1]
    )
    with pytest.raises(FileNotFoundError, match=r"panoptic annotation file .*nothere\.png"):
        read_image_file(str(tmp_path / "nothere.png"), "RGB", role="panoptic annotation")
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    with pytest.raises(OSError, match=r"semantic annotation file.*text\.png") as raised:
        read_image_file(str(tmp_path / "text.png"), None, role="semantic annotation")
    assert not isinstance(raised.value, FileNotFoundError)
    # The demo's reader is the same reader with one exception type.
    with pytest.raises(UnreadableImageError) as raised:
        read_image_uint8(str(tmp_path / "nothere.png"))
    assert isinstance(raised.value.__cause__, FileNotFoundError)
