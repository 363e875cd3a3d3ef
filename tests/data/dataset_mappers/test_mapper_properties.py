"""Property-based tests (hypothesis) of the mappers on random sizes and random annotations.

The LSJ mappers have theirs in test_dataset_mappers.py; these cover the semantic recipe, DETR
detection with random (also degenerate) boxes, the classification mapper on random image kinds and
sizes, the compressed-RLE reader against pycocotools' encoder, and panopticapi's ``rgb2id`` (the
mappers') against the shapes generator's ``id2rgb``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from panopticapi.utils import rgb2id
from PIL import Image

from clusterformer.data.dataset_mappers import (
    DETRDetectionDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from clusterformer.data.dataset_mappers.augmentations import ResizeShortestEdge
from clusterformer.data.dataset_mappers.classification import ClassificationDatasetMapper
from clusterformer.data.datasets.mask_encoding import compressed_rle_counts, id2rgb

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IGNORE = 255


def fortran_runs(mask: np.ndarray) -> list:
    """COCO run lengths (column-major, starting with a run of zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return runs


@SETTINGS
@given(st.integers(1, 30), st.integers(1, 30), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_compressed_rle_counts_match_the_encoder(height, width, density, seed):
    mask = np.random.default_rng(seed).random((height, width)) < density
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert compressed_rle_counts(rle["counts"]) == fortran_runs(mask)


@st.composite
def semantic_samples(draw):
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    labels = draw(
        st.lists(st.sampled_from([0, 1, 2, 3, IGNORE]), min_size=1, max_size=4, unique=True)
    )
    crop = draw(st.integers(4, 24))
    divisibility = draw(st.sampled_from([-1, 8, 32]))
    seed = draw(st.integers(0, 2**31 - 1))
    return height, width, labels, crop, divisibility, seed


@SETTINGS
@given(semantic_samples())
def test_semantic_mapper_targets_agree_with_its_label_map(sample):
    height, width, labels, crop, divisibility, seed = sample
    rng = np.random.default_rng(seed)
    label_map = rng.choice(np.array(labels, np.uint8), size=(height, width))
    image = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    mapper = MaskFormerSemanticDatasetMapper(
        True,
        augmentations=[
            ResizeShortestEdge([16, 24], 64, "choice"),
            T.RandomCrop_CategoryAreaConstraint("absolute", (crop, crop), 1.0, IGNORE),
            T.RandomFlip(),
        ],
        image_format="RGB",
        num_classes=4,
        ignore_label=IGNORE,
        size_divisibility=divisibility,
    )
    with tempfile.TemporaryDirectory() as folder:
        Image.fromarray(image).save(Path(folder) / "i.png")
        Image.fromarray(label_map).save(Path(folder) / "l.png")
        np.random.seed(seed % 2**32)
        out = mapper(
            {
                "file_name": str(Path(folder) / "i.png"),
                "sem_seg_file_name": str(Path(folder) / "l.png"),
                "height": height,
                "width": width,
            }
        )
    sem_seg, padding = out["sem_seg"], out["padding_mask"]
    assert out["image"].shape[-2:] == sem_seg.shape == padding.shape
    if divisibility > 0:
        assert sem_seg.shape[0] % divisibility == 0 and sem_seg.shape[1] % divisibility == 0
    assert set(sem_seg.unique().tolist()) <= set(labels) | {IGNORE}
    assert (sem_seg[padding] == IGNORE).all() and (out["image"][:, padding] == 0).all()
    instances = out["instances"]
    classes = instances.gt_classes.tolist()
    assert len(classes) == len(set(classes)) and IGNORE not in classes
    for class_id, mask in zip(classes, instances.gt_masks.tensor):
        assert torch.equal(mask, sem_seg == class_id)
    assert set(classes) == set(sem_seg.unique().tolist()) - {IGNORE}


@st.composite
def detection_samples(draw):
    height, width = draw(st.integers(2, 40)), draw(st.integers(2, 40))
    boxes = []
    for _ in range(draw(st.integers(0, 6))):
        x0 = draw(st.floats(-10, width + 10))
        y0 = draw(st.floats(-10, height + 10))
        w = draw(st.one_of(st.just(0.0), st.floats(0, width + 10)))
        h = draw(st.one_of(st.just(0.0), st.floats(0, height + 10)))
        boxes.append((x0, y0, w, h, draw(st.integers(0, 2)), draw(st.booleans())))
    return height, width, boxes, draw(st.integers(0, 2**31 - 1))


@SETTINGS
@given(detection_samples())
def test_detection_boxes_are_valid_inside_the_image_and_follow_the_transform(sample):
    height, width, boxes, seed = sample
    annotations = [
        {
            "bbox": [x0, y0, w, h],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": c,
            "iscrowd": int(crowd),
        }
        for x0, y0, w, h, c, crowd in boxes
    ]
    flip = seed % 2 == 0
    mapper = DETRDetectionDatasetMapper(
        True,
        augmentations=[
            T.RandomFlip(prob=1.0 if flip else 0.0),
            ResizeShortestEdge([24], 48, "choice"),
        ],
        image_format="RGB",
        num_classes=3,
    )
    with tempfile.TemporaryDirectory() as folder:
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(Path(folder) / "i.png")
        out = mapper(
            {
                "file_name": str(Path(folder) / "i.png"),
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    out_h, out_w = out["image"].shape[-2:]
    result = out["instances"].gt_boxes.tensor
    assert result.dtype == torch.float32
    assert ((result[:, 2] > result[:, 0]) & (result[:, 3] > result[:, 1])).all()  # non-empty
    assert (result[:, 0::2] >= 0).all() and (result[:, 0::2] <= out_w).all()
    assert (result[:, 1::2] >= 0).all() and (result[:, 1::2] <= out_h).all()
    # Expected: each non-crowd box clipped to the image, flipped and scaled like the image.
    expected, expected_classes = [], []
    for x0, y0, w, h, class_id, crowd in boxes:
        if crowd:
            continue
        x_lo, x_hi = np.clip([x0, x0 + w], 0, width)
        y_lo, y_hi = np.clip([y0, y0 + h], 0, height)
        if flip:
            x_lo, x_hi = width - x_hi, width - x_lo
        box = np.array(
            [
                x_lo * out_w / width,
                y_lo * out_h / height,
                x_hi * out_w / width,
                y_hi * out_h / height,
            ]
        )
        if box[2] > box[0] and box[3] > box[1]:
            expected.append(box)
            expected_classes.append(class_id)
    assert len(result) == len(expected)
    if expected:
        np.testing.assert_allclose(result.numpy(), np.stack(expected), atol=1e-3)
    assert out["instances"].gt_classes.tolist() == expected_classes


@st.composite
def classification_samples(draw):
    height, width = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    kind = draw(st.sampled_from(["RGB", "L", "RGBA", "I;16", "P"]))
    return height, width, kind, draw(st.integers(0, 2**31 - 1)), draw(st.booleans())


@SETTINGS
@given(classification_samples())
def test_classification_mapper_gives_the_crop_size_for_any_image(sample):
    height, width, kind, seed, is_train = sample
    rng = np.random.default_rng(seed)
    if kind == "I;16":
        image = Image.fromarray((rng.random((height, width)) * 65535).astype(np.uint16))
    else:
        image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).convert(
            kind
        )
    mapper = ClassificationDatasetMapper(
        is_train,
        image_format="BGR",
        train_crop=16,
        crop_scale=(0.3, 1.0),
        horizontal_flip=True,
        rand_augment_magnitude=9 if seed % 2 else None,
        random_erasing=0.5,
        test_resize=18,
        test_crop=16,
    )
    with tempfile.TemporaryDirectory() as folder:
        image.save(Path(folder) / "i.png")
        torch.manual_seed(seed)
        out = mapper({"file_name": str(Path(folder) / "i.png"), "image_id": 0, "label": 3})
    assert out["image"].shape == (3, 16, 16) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == (16, 16) and out["label"] == 3


@SETTINGS
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_panopticapi_rgb2id_reads_the_generators_panoptic_colours(height, width, seed):
    """The shapes generator writes panoptic PNGs with its own id2rgb (no panopticapi there); the
    mappers read them with panopticapi's rgb2id: every id in [0, 256^3) survives the trip."""
    ids = np.random.default_rng(seed).integers(0, 256**3, size=(height, width))
    ids.flat[0] = 256**3 - 1
    np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)
