"""The COCO mask encodings of clusterformer.data.datasets.mask_encoding against pycocotools."""

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from clusterformer.data.datasets.mask_encoding import (
    coco_segmentation_to_mask,
    compressed_rle_counts,
    encode_rle,
    id2rgb,
    mask_bbox,
    mask_boundary_loops,
    mask_to_polygons,
    rgb2id,
    signed_area,
)

# pycocotools' decode under numpy 2 warns about __array__; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _random_masks(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = (int(v) for v in rng.integers(1, 24, size=2))
        mask = rng.random((height, width)) < rng.uniform(0.1, 0.9)
        if index % 2:  # blobs rather than salt and pepper
            mask = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        yield mask


def _decode_polygons(polygons, height, width):
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _has_holes(mask: np.ndarray) -> bool:
    """Reference: a background 8-component that does not reach the border."""
    background = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    count, _ = cv2.connectedComponents(background, connectivity=8)
    return count - 1 > 1


def test_rle_string_equals_pycocotools():
    edge_cases = [
        np.zeros((3, 5), bool),
        np.ones((3, 5), bool),
        np.eye(4, 6, dtype=bool),
        np.ones((1, 7), bool),
        np.zeros((7, 1), bool),
    ]
    for mask in [*edge_cases, *_random_masks(400)]:
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = encode_rle(mask)
        assert ours["size"] == [mask.shape[0], mask.shape[1]]
        assert ours["counts"] == reference["counts"].decode("ascii")
        assert np.array_equal(mask_utils.decode(ours).astype(bool), mask)


def test_large_rle_with_long_runs_equals_pycocotools():
    mask = np.zeros((300, 700), bool)
    mask[10:290, 5:600] = True
    mask[100:110, 300:310] = False
    reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert encode_rle(mask)["counts"] == reference["counts"].decode("ascii")


def test_polygons_decode_exactly_and_holes_are_detected():
    checked_polygons = checked_holes = 0
    for mask in _random_masks(600, seed=1):
        if not mask.any():
            assert mask_to_polygons(mask) == ([], False)
            continue
        polygons, has_holes = mask_to_polygons(mask)
        assert has_holes == _has_holes(mask)
        count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
        assert len(polygons) == count - 1  # one outer boundary per 4-connected component
        assert all(len(p) >= 8 and len(p) % 2 == 0 for p in polygons)
        if has_holes:
            checked_holes += 1
            # The outer boundaries cover the holes: polygons cannot be exact, hence RLE.
            assert _decode_polygons(polygons, *mask.shape).sum() > mask.sum()
        else:
            checked_polygons += 1
            assert np.array_equal(_decode_polygons(polygons, *mask.shape), mask)
        # Outer loops minus hole loops count the pixels exactly.
        assert sum(signed_area(loop) for loop in mask_boundary_loops(mask)) == mask.sum()
    assert checked_polygons > 100 and checked_holes > 100


def test_diagonal_neighbours_are_separate_polygons():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    polygons, has_holes = mask_to_polygons(mask)
    assert not has_holes
    assert sorted(polygons) == [
        [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0],
        [1.0, 1.0, 2.0, 1.0, 2.0, 2.0, 1.0, 2.0],
    ]
    # A ring closed only through a corner encloses nothing (the background is 8-connected).
    ring = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)
    polygons, has_holes = mask_to_polygons(ring)
    assert not has_holes and len(polygons) == 1
    assert np.array_equal(_decode_polygons(polygons, 3, 3), ring)


def test_ring_has_a_hole_loop():
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    loops = mask_boundary_loops(ring)
    assert sorted(signed_area(loop) for loop in loops) == [-1, 25]
    assert mask_to_polygons(ring) == ([[0.0, 0.0, 5.0, 0.0, 5.0, 5.0, 0.0, 5.0]], True)


def test_bbox_equals_pycocotools():
    for mask in _random_masks(200, seed=2):
        if mask.any():
            reference = mask_utils.toBbox(
                mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            )
            assert mask_bbox(mask) == reference.astype(int).tolist()
    with pytest.raises(ValueError, match="empty"):
        mask_bbox(np.zeros((3, 3), bool))


def test_panoptic_id_colour_round_trip():
    ids = np.array([[0, 1, 255], [256, 65536, 256**3 - 1]])
    colours = id2rgb(ids)
    assert colours.dtype == np.uint8 and colours.shape == (2, 3, 3)
    assert colours[1, 0].tolist() == [0, 1, 0]
    assert np.array_equal(rgb2id(colours), ids)
    with pytest.raises(ValueError, match="256"):
        id2rgb(np.array([256**3]))
    with pytest.raises(ValueError, match="2-D"):
        mask_to_polygons(np.zeros((2, 2, 2), bool))


def test_segmentation_decoder_round_trips_every_coco_form_through_pycocotools():
    for mask in _random_masks(200, seed=3):
        height, width = mask.shape
        rle = encode_rle(mask)
        runs = compressed_rle_counts(rle["counts"].encode("ascii"))
        assert sum(runs) == height * width
        forms = [
            rle,  # compressed, str counts (COCO JSON)
            {**rle, "counts": rle["counts"].encode("ascii")},  # compressed, bytes counts
            {"size": [height, width], "counts": runs},  # uncompressed run lengths
        ]
        polygons, has_holes = mask_to_polygons(mask)
        if not has_holes:
            forms.append(polygons)
        for segmentation in forms:
            decoded = coco_segmentation_to_mask(segmentation, height, width, "m.png", 3)
            assert decoded.dtype == bool and np.array_equal(decoded, mask)


def test_segmentation_decoder_rejects_what_pycocotools_would_misread():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    rle = encode_rle(mask)
    runs = compressed_rle_counts(rle["counts"].encode("ascii"))
    with pytest.raises(ValueError, match=r"#2 of 'm\.png'.*covers 19 pixels.*4 x 5"):
        coco_segmentation_to_mask(
            {"size": [4, 5], "counts": [*runs[:-1], runs[-1] - 1]}, 4, 5, "m.png", 2
        )
    with pytest.raises(ValueError, match="ends inside a number"):
        coco_segmentation_to_mask({"size": [4, 5], "counts": "P"}, 4, 5, "m.png", 2)
    with pytest.raises(ValueError, match=r"size \[5, 4\]"):
        coco_segmentation_to_mask({**rle, "size": [5, 4]}, 4, 5, "m.png", 2)
    with pytest.raises(ValueError, match="non-finite"):
        coco_segmentation_to_mask([[0, 0, float("nan"), 1, 2, 2]], 4, 5, "m.png", 2)
