"""Dataset mappers for segmentation and detection: output format, geometry, padding, errors."""

from __future__ import annotations

import copy
import importlib.util
import json
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances
from fake_segmentation_data import (
    ADE_PERSON,
    BANNER_CONTIGUOUS,
    BED,
    CAR_CONTIGUOUS,
    HEIGHT,
    PERSON_BOX,
    PERSON_COLOR,
    PERSON_CONTIGUOUS,
    SKY,
    WALL,
    WIDTH,
    ids_to_rgb,
    make_ade,
    make_coco,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from clusterformer import add_clusterformer_config
from clusterformer.data.dataset_mappers import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from clusterformer.data.dataset_mappers.detr import DETRDetectionDatasetMapper
from clusterformer.data.dataset_mappers.lsj import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
)
from clusterformer.data.dataset_mappers.mask_former import (
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from clusterformer.data.datasets import (
    PanopticFiles,
    register_ade20k_panoptic,
    register_ade20k_semantic,
    register_coco_panoptic_with_sem_seg,
)
from clusterformer.data.datasets.register_ade20k_panoptic import ade20k_panoptic_metadata
from clusterformer.data.datasets.register_coco_panoptic_semseg import coco_panoptic_metadata

SCRIPTS = Path(__file__).resolve().parents[3] / "datasets"
METADATA_KEYS = {"file_name", "image_id", "height", "width"}
SEGMENTATION_MAPPERS = (
    "coco_panoptic_lsj",
    "coco_instance_lsj",
    "mask_former_semantic",
    "mask_former_panoptic",
    "detr_detection",
)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def run_prepare(name: str, root: Path, monkeypatch, *argv: str) -> None:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    module.main([*argv, "--workers", "1"])


# ---- fake data sets, registered under fresh names ------------------------------------------


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Fake COCO: panoptic dicts (our loader) and instance dicts (Detectron2's load_coco_json)."""
    root = tmp_path_factory.mktemp("coco_root")
    fake = make_coco(root)
    coco_dir = fake["coco"]
    monkeypatch = pytest.MonkeyPatch()
    run_prepare(
        "prepare_coco_semantic_annos_from_panoptic_annos",
        root,
        monkeypatch,
        "--splits",
        "train2017",
    )
    monkeypatch.undo()
    panoptic_name = unique_name("test_mapper_coco_panoptic")
    register_coco_panoptic_with_sem_seg(
        panoptic_name,
        coco_panoptic_metadata(),
        PanopticFiles(
            str(coco_dir / "train2017"),
            str(coco_dir / "panoptic_train2017"),
            str(coco_dir / "annotations/panoptic_train2017.json"),
            str(coco_dir / "panoptic_semseg_train2017"),
        ),
        str(coco_dir / "annotations/instances_train2017.json"),
    )
    instance_name = unique_name("test_mapper_coco_instances")
    instance_dicts = load_coco_json(
        str(coco_dir / "annotations/instances_train2017.json"),
        str(coco_dir / "train2017"),
        instance_name,
    )
    DatasetCatalog.register(instance_name, lambda: instance_dicts)
    return {
        **fake,
        "panoptic_name": panoptic_name,
        "panoptic_dicts": DatasetCatalog.get(panoptic_name),
        "instance_name": instance_name,
        "instance_dicts": instance_dicts,
    }


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade_root")
    fake = make_ade(root)
    monkeypatch = pytest.MonkeyPatch()
    run_prepare("prepare_ade20k_sem_seg", root, monkeypatch)
    run_prepare("prepare_ade20k_pan_seg", root, monkeypatch)
    monkeypatch.undo()
    ade_dir = fake["ade"]
    semantic_name = unique_name("test_mapper_ade_semantic")
    register_ade20k_semantic(
        semantic_name,
        str(ade_dir / "images/training"),
        str(ade_dir / "annotations_detectron2/training"),
    )
    panoptic_name = unique_name("test_mapper_ade_panoptic")
    register_ade20k_panoptic(
        panoptic_name,
        ade20k_panoptic_metadata(),
        PanopticFiles(
            str(ade_dir / "images/training"),
            str(ade_dir / "ade20k_panoptic_train"),
            str(ade_dir / "ade20k_panoptic_train.json"),
            str(ade_dir / "annotations_detectron2/training"),
        ),
    )
    return {
        **fake,
        "semantic_name": semantic_name,
        "semantic_dicts": DatasetCatalog.get(semantic_name),
        "panoptic_name": panoptic_name,
        "panoptic_dicts": DatasetCatalog.get(panoptic_name),
    }


def make_cfg(mapper_name: str, train_dataset: str):
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    cfg.DATASETS.TRAIN = (train_dataset,)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.IMAGE_SIZE = 64
    cfg.INPUT.MIN_SCALE = 0.5
    cfg.INPUT.MAX_SCALE = 2.0
    cfg.INPUT.MIN_SIZE_TRAIN = (40, 48)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 200
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (32, 32)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.9
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    return cfg


def check_instances(instances: Instances, image_hw, padding_mask=None, num_classes=None):
    """The shared target schema (see targets.py) and its invariants."""
    assert isinstance(instances, Instances) and instances.image_size == tuple(image_hw)
    assert instances.gt_classes.dtype == torch.int64
    assert isinstance(instances.gt_masks, BitMasks) and isinstance(instances.gt_boxes, Boxes)
    masks = instances.gt_masks.tensor
    assert masks.dtype == torch.bool and masks.shape == (len(instances), *image_hw)
    assert masks.flatten(1).any(1).all(), "empty masks must be dropped"
    if padding_mask is not None:
        assert not (masks & padding_mask).any(), "a mask covers padding"
    if num_classes is not None and len(instances):
        assert 0 <= instances.gt_classes.min() and instances.gt_classes.max() < num_classes
    # Boxes are the tight boxes of the masks (x1, y1 exclusive).
    for mask, box in zip(masks, instances.gt_boxes.tensor):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        expected = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert box.tolist() == [float(v) for v in expected]


# ---- registry and test mode ----------------------------------------------------------------


def test_all_mappers_registered():
    assert set(SEGMENTATION_MAPPERS) <= set(DATASET_MAPPER_REGISTRY)


@pytest.mark.parametrize("mapper_name", SEGMENTATION_MAPPERS)
def test_test_mode_returns_image_and_metadata_only(mapper_name, coco, ade):
    dataset = {
        "coco_panoptic_lsj": coco["panoptic_dicts"],
        "coco_instance_lsj": coco["instance_dicts"],
        "mask_former_semantic": ade["semantic_dicts"],
        "mask_former_panoptic": ade["panoptic_dicts"],
        "detr_detection": coco["instance_dicts"],
    }[mapper_name]
    cfg = make_cfg(mapper_name, "no_such_training_set")
    mapper = build_dataset_mapper(cfg, is_train=False)
    record = copy.deepcopy(dataset[0])
    record.setdefault("image_id", 7)  # load_sem_seg gives none
    output = mapper(record)
    assert record == {**dataset[0], "image_id": record["image_id"]}, "the input was modified"
    assert set(output) == METADATA_KEYS | {"image"}
    assert (output["height"], output["width"]) == (HEIGHT, WIDTH)
    # Short side resized to MIN_SIZE_TEST, aspect ratio kept.
    assert output["image"].dtype == torch.uint8 and output["image"].shape == (3, 64, 96)


# ---- coco_panoptic_lsj -----------------------------------------------------------------------


def test_coco_panoptic_lsj_training_output(coco):
    cfg = make_cfg("coco_panoptic_lsj", coco["panoptic_name"])
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert isinstance(mapper, COCOPanopticLSJDatasetMapper) and mapper.num_classes == 133
    for seed in range(6):
        np.random.seed(seed)
        output = mapper(coco["panoptic_dicts"][0])
        assert set(output) == METADATA_KEYS | {
            "image",
            "instances",
            "padding_mask",
            "segments_info",
        }
        assert output["image"].shape == (3, 64, 64) and output["image"].dtype == torch.uint8
        padding = output["padding_mask"]
        assert padding.shape == (64, 64) and padding.dtype == torch.bool
        check_instances(output["instances"], (64, 64), padding, num_classes=133)
        classes = set(output["instances"].gt_classes.tolist())
        assert CAR_CONTIGUOUS not in classes, "crowd segments are not targets"
        assert classes <= {PERSON_CONTIGUOUS, BANNER_CONTIGUOUS}
        masks = output["instances"].gt_masks.tensor
        assert masks.sum(0).max() <= 1, "panoptic segments overlap"
    # Scale 0.5..2 of 64 on a 32 x 48 image: at small scales there is padding.
    np.random.seed(0)
    scales = [mapper(coco["panoptic_dicts"][0])["padding_mask"].any() for _ in range(8)]
    assert any(scales)


def test_coco_panoptic_lsj_things_and_stuff_follow_a_flip(coco):
    """A horizontal flip then padding to 48 x 48: each mask lands at the mirrored place."""
    mapper = COCOPanopticLSJDatasetMapper(
        True,
        augmentations=[T.RandomFlip(prob=1.0), T.FixedSizeCrop((48, 48))],
        image_format="RGB",
        num_classes=133,
    )
    output = mapper(coco["panoptic_dicts"][0])
    scene = coco["scene"]
    instances = output["instances"]
    assert sorted(instances.gt_classes.tolist()) == [PERSON_CONTIGUOUS, BANNER_CONTIGUOUS]
    by_class = dict(zip(instances.gt_classes.tolist(), instances.gt_masks.tensor))
    for class_id, mask in (
        (PERSON_CONTIGUOUS, scene["person"]),
        (BANNER_CONTIGUOUS, scene["banner"]),
    ):
        expected = np.zeros((48, 48), dtype=bool)
        expected[:HEIGHT] = np.fliplr(mask)
        np.testing.assert_array_equal(by_class[class_id].numpy(), expected)
    row0, row1, col0, col1 = PERSON_BOX
    person_box = instances.gt_boxes.tensor[instances.gt_classes == PERSON_CONTIGUOUS][0]
    assert person_box.tolist() == [WIDTH - col1, row0, WIDTH - col0, row1]
    # The image moved the same way: the person's pixels carry its colour.
    image = output["image"].permute(1, 2, 0).numpy()
    assert (image[by_class[PERSON_CONTIGUOUS].numpy()] == PERSON_COLOR).all()
    # Padding: rows 32..47, marked, grey (128) in the image, in no mask.
    padding = output["padding_mask"].numpy()
    assert padding[HEIGHT:].all() and not padding[:HEIGHT].any()
    assert (image[HEIGHT:] == 128).all()


def test_coco_panoptic_lsj_errors(coco, tmp_path):
    mapper = COCOPanopticLSJDatasetMapper(
        True, augmentations=[], image_format="RGB", num_classes=133
    )
    record = coco["panoptic_dicts"][0]

    unknown = copy.deepcopy(record)
    unknown["segments_info"][0]["category_id"] = 500
    with pytest.raises(
        ValueError, match=r"panoptic_train2017/000000000001\.png.*unknown category id 500"
    ):
        mapper(unknown)

    smaller_png = tmp_path / "small_pan.png"
    Image.fromarray(ids_to_rgb(np.zeros((HEIGHT, WIDTH - 2), np.int64))).save(smaller_png)
    mismatched = {**copy.deepcopy(record), "pan_seg_file_name": str(smaller_png)}
    with pytest.raises(SizeMismatchError, match=r"small_pan\.png.*000000000001\.png"):
        mapper(mismatched)

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    for mode_mapper in (
        mapper,
        COCOPanopticLSJDatasetMapper(False, augmentations=[], image_format="RGB"),
    ):
        with pytest.raises(OSError, match=r"garbage\.jpg"):
            mode_mapper({**copy.deepcopy(record), "file_name": str(garbage)})
        with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
            mode_mapper({**copy.deepcopy(record), "file_name": str(tmp_path / "missing.jpg")})

    wrong_size = {**copy.deepcopy(record), "height": HEIGHT + 1}
    with pytest.raises(SizeMismatchError, match=r"000000000001\.png"):
        mapper(wrong_size)


# ---- coco_instance_lsj ---------------------------------------------------------------------


def test_coco_instance_lsj_training_output(coco):
    cfg = make_cfg("coco_instance_lsj", coco["instance_name"])
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert isinstance(mapper, COCOInstanceLSJDatasetMapper) and mapper.num_classes == 2
    for seed in range(6):
        np.random.seed(seed)
        output = mapper(coco["instance_dicts"][0])
        assert set(output) == METADATA_KEYS | {"image", "instances", "padding_mask"}
        assert output["image"].shape == (3, 64, 64)
        check_instances(output["instances"], (64, 64), output["padding_mask"], num_classes=2)
        # The crowd car is dropped; the two people (polygon and RLE) remain unless cropped away.
        assert output["instances"].gt_classes.tolist() in ([0], [0, 0])


def test_coco_instance_lsj_polygon_and_rle_follow_a_flip(coco):
    mapper = COCOInstanceLSJDatasetMapper(
        True,
        augmentations=[T.RandomFlip(prob=1.0), T.FixedSizeCrop((40, 56))],
        image_format="RGB",
        num_classes=2,
    )
    output = mapper(coco["instance_dicts"][0])
    masks = output["instances"].gt_masks.tensor.numpy()
    for mask, source in zip(masks, (coco["scene"]["person"], coco["second_person"])):
        expected = np.zeros((40, 56), dtype=bool)
        expected[:HEIGHT, :WIDTH] = np.fliplr(source)
        np.testing.assert_array_equal(mask, expected)
    assert output["padding_mask"][HEIGHT:].all() and output["padding_mask"][:, WIDTH:].all()


def test_coco_instance_lsj_drops_instances_cropped_away(coco):
    # Keep the left 24 columns: the second person (columns 36..45) disappears.
    crop = T.CropTransform(0, 0, 24, HEIGHT)
    mapper = COCOInstanceLSJDatasetMapper(True, augmentations=[crop], image_format="RGB")
    output = mapper(coco["instance_dicts"][0])
    assert len(output["instances"]) == 1
    row0, row1, col0, col1 = PERSON_BOX
    assert output["instances"].gt_boxes.tensor.tolist() == [[col0, row0, col1, row1]]


def test_coco_instance_lsj_errors(coco):
    mapper = COCOInstanceLSJDatasetMapper(True, augmentations=[], image_format="RGB", num_classes=2)
    unknown = copy.deepcopy(coco["instance_dicts"][0])
    unknown["annotations"][2]["category_id"] = 80
    with pytest.raises(ValueError, match=r"#\d of .*000000000001\.png.*unknown category id 80"):
        mapper(unknown)
    bad_rle = copy.deepcopy(coco["instance_dicts"][0])
    bad_rle["annotations"][2]["segmentation"]["size"] = [HEIGHT, WIDTH + 1]
    with pytest.raises(ValueError, match=r"000000000001\.png"):
        mapper(bad_rle)


# ---- mask_former_semantic ------------------------------------------------------------------


def test_mask_former_semantic_training_output(ade):
    cfg = make_cfg("mask_former_semantic", ade["semantic_name"])
    cfg.INPUT.COLOR_AUG_SSD = True
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert isinstance(mapper, MaskFormerSemanticDatasetMapper)
    assert [type(a).__name__ for a in mapper.augmentations] == [
        "ResizeShortestEdge",
        "RandomCrop_CategoryAreaConstraint",
        "ColorAugSSDTransform",
        "RandomFlip",
    ]
    assert (mapper.num_classes, mapper.ignore_label, mapper.size_divisibility) == (150, 255, 32)
    for seed in range(6):
        np.random.seed(seed)
        output = mapper(ade["semantic_dicts"][0])
        assert set(output) == METADATA_KEYS - {"image_id"} | {
            "image",
            "sem_seg",
            "instances",
            "padding_mask",
        }
        image, sem_seg = output["image"], output["sem_seg"]
        # Crop 32 x 32 from a 40..48-short-side resize: already divisible by 32.
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
        assert sem_seg.shape == (32, 32) and sem_seg.dtype == torch.int64
        present = set(sem_seg.unique().tolist()) - {255}
        assert present <= {WALL, SKY, BED, ADE_PERSON}
        instances = output["instances"]
        check_instances(instances, (32, 32), output["padding_mask"], num_classes=150)
        assert sorted(instances.gt_classes.tolist()) == sorted(present)
        for class_id, mask in zip(instances.gt_classes, instances.gt_masks.tensor):
            assert torch.equal(mask, sem_seg == class_id)


def test_mask_former_semantic_flip_and_size_divisibility_padding(ade):
    mapper = MaskFormerSemanticDatasetMapper(
        True,
        augmentations=[T.RandomFlip(prob=1.0)],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=20,
        num_classes=150,
    )
    output = mapper(ade["semantic_dicts"][0])
    raw = ade["scene"]["raw"]
    expected = np.full((40, 60), 255, dtype=np.int64)
    expected[:HEIGHT, :WIDTH] = np.fliplr(raw.astype(np.int64) - 1) % 256
    np.testing.assert_array_equal(output["sem_seg"].numpy(), expected)
    assert output["image"].shape == (3, 40, 60)
    assert (output["image"][:, HEIGHT:] == 0).all() and (output["image"][:, :, WIDTH:] == 0).all()
    padding = output["padding_mask"]
    assert (
        padding[HEIGHT:].all() and padding[:, WIDTH:].all() and not padding[:HEIGHT, :WIDTH].any()
    )
    check_instances(output["instances"], (40, 60), padding, num_classes=150)


def test_mask_former_semantic_errors(ade, tmp_path):
    mapper = MaskFormerSemanticDatasetMapper(
        True, augmentations=[], image_format="RGB", num_classes=150
    )
    record = ade["semantic_dicts"][0]
    out_of_range = tmp_path / "labels.png"
    Image.fromarray(np.full((HEIGHT, WIDTH), 151, np.uint8)).save(out_of_range)
    with pytest.raises(ValueError, match=r"labels\.png.*\[151\]"):
        mapper({**record, "sem_seg_file_name": str(out_of_range)})

    smaller = tmp_path / "smaller.png"
    Image.fromarray(np.zeros((HEIGHT - 1, WIDTH), np.uint8)).save(smaller)
    with pytest.raises(SizeMismatchError, match=r"smaller\.png.*ADE_train_00000001\.jpg"):
        mapper({**record, "sem_seg_file_name": str(smaller)})

    with pytest.raises(KeyError, match="sem_seg_file_name"):
        mapper({k: v for k, v in record.items() if k != "sem_seg_file_name"})


def test_ignore_label_must_agree_with_config(ade):
    cfg = make_cfg("mask_former_semantic", ade["semantic_name"])
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 254
    with pytest.raises(ValueError, match="ignore_label=255.*IGNORE_VALUE=254"):
        build_dataset_mapper(cfg, is_train=True)


# ---- mask_former_panoptic ------------------------------------------------------------------


def test_mask_former_panoptic_training_output(ade):
    cfg = make_cfg("mask_former_panoptic", ade["panoptic_name"])
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert isinstance(mapper, MaskFormerPanopticDatasetMapper) and mapper.num_classes == 150
    seen_classes = set()
    for seed in range(6):
        np.random.seed(seed)
        output = mapper(ade["panoptic_dicts"][0])
        assert set(output) == METADATA_KEYS | {
            "image",
            "sem_seg",
            "instances",
            "padding_mask",
            "segments_info",
        }
        assert output["image"].shape == (3, 32, 32) and output["sem_seg"].dtype == torch.int64
        instances = output["instances"]
        check_instances(instances, (32, 32), output["padding_mask"], num_classes=150)
        assert instances.gt_masks.tensor.sum(0).max() <= 1
        # Every segment mask lies inside its class in the derived semantic map.
        for class_id, mask in zip(instances.gt_classes, instances.gt_masks.tensor):
            assert (output["sem_seg"][mask] == class_id).all()
        seen_classes |= set(instances.gt_classes.tolist())
    assert seen_classes <= {WALL, SKY, BED, ADE_PERSON} and {BED, WALL} <= seen_classes


def test_mask_former_panoptic_things_and_stuff_and_semantic(ade):
    """Without augmentation: one mask per segment, and sem_seg equals the converted ADE labels
    except where a thing class has no instance (void in panoptic)."""
    mapper = MaskFormerPanopticDatasetMapper(
        True, augmentations=[T.RandomFlip(prob=1.0)], image_format="RGB", num_classes=150
    )
    record = ade["panoptic_dicts"][0]
    output = mapper(record)
    scene = ade["scene"]
    instances = output["instances"]
    assert sorted(instances.gt_classes.tolist()) == sorted([WALL, SKY, BED, ADE_PERSON])
    by_class = dict(zip(instances.gt_classes.tolist(), instances.gt_masks.tensor.numpy()))
    np.testing.assert_array_equal(by_class[BED], np.fliplr(scene["bed"]))
    np.testing.assert_array_equal(by_class[ADE_PERSON], np.fliplr(scene["person"]))
    with Image.open(record["sem_seg_file_name"]) as png:
        converted = np.asarray(png).astype(np.int64)
    expected = converted.copy()
    expected[scene["orphan_person"]] = 255
    expected[scene["person"]] = ADE_PERSON
    np.testing.assert_array_equal(output["sem_seg"].numpy(), np.fliplr(expected))


def test_mask_former_panoptic_unknown_category(ade):
    mapper = MaskFormerPanopticDatasetMapper(
        True, augmentations=[], image_format="RGB", num_classes=150
    )
    record = copy.deepcopy(ade["panoptic_dicts"][0])
    record["segments_info"][-1]["category_id"] = 150
    with pytest.raises(ValueError, match=r"ade20k_panoptic_train/ADE_train_00000001\.png.*150"):
        mapper(record)


# ---- detr_detection ------------------------------------------------------------------------


@pytest.mark.parametrize("mask_on", [False, True])
@pytest.mark.parametrize("recipe", ["detr", "lsj"])
def test_detr_detection_training_output(coco, mask_on, recipe):
    cfg = make_cfg("detr_detection", coco["instance_name"])
    cfg.MODEL.CLUSTER_DECODER.MASK_ON = mask_on
    cfg.INPUT.DETECTION_AUGMENTATION = recipe
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = (16, 30)
    cfg.INPUT.DETR_PRE_CROP_MIN_SIZES = [32, 40]
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert isinstance(mapper, DETRDetectionDatasetMapper) and mapper.mask_on == mask_on
    for seed in range(8):
        np.random.seed(seed)
        output = mapper(coco["instance_dicts"][0])
        assert set(output) == METADATA_KEYS | {"image", "instances", "padding_mask"}
        image_hw = tuple(output["image"].shape[1:])
        if recipe == "lsj":
            assert image_hw == (64, 64)
        else:
            assert min(image_hw) in (40, 48) and max(image_hw) <= 96
        instances = output["instances"]
        expected_fields = {"gt_boxes", "gt_classes"} | ({"gt_masks"} if mask_on else set())
        assert set(instances.get_fields()) == expected_fields
        boxes = instances.gt_boxes.tensor
        assert boxes.dtype == torch.float32 and boxes.shape == (len(instances), 4)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= image_hw[1]).all()
        assert (boxes[:, 1::2] <= image_hw[0]).all()
        assert (instances.gt_classes == 0).all()  # the crowd car is dropped
        if mask_on:
            masks = instances.gt_masks.tensor
            assert masks.shape == (len(instances), *image_hw) and masks.flatten(1).any(1).all()


def test_detr_detection_boxes_follow_a_flip(coco):
    mapper = DETRDetectionDatasetMapper(
        True, augmentations=[T.RandomFlip(prob=1.0)], image_format="RGB", mask_on=True
    )
    output = mapper(coco["instance_dicts"][0])
    row0, row1, col0, col1 = PERSON_BOX
    assert output["instances"].gt_boxes.tensor.tolist() == [
        [WIDTH - col1, row0, WIDTH - col0, row1],
        [WIDTH - 46, 14, WIDTH - 36, 18],
    ]
    assert not output["padding_mask"].any()
    expected = np.fliplr(coco["scene"]["person"])
    np.testing.assert_array_equal(output["instances"].gt_masks.tensor[0].numpy(), expected)


def test_detr_detection_requires_bbox_mode(coco):
    mapper = DETRDetectionDatasetMapper(True, augmentations=[], image_format="RGB")
    record = copy.deepcopy(coco["instance_dicts"][0])
    del record["annotations"][0]["bbox_mode"]
    with pytest.raises(KeyError, match="bbox_mode"):
        mapper(record)


def test_unknown_detection_recipe(coco):
    cfg = make_cfg("detr_detection", coco["instance_name"])
    cfg.INPUT.DETECTION_AUGMENTATION = "mosaic"
    with pytest.raises(ValueError, match="DETECTION_AUGMENTATION='mosaic'"):
        build_dataset_mapper(cfg, is_train=True)


# ---- property test: random images and annotations ------------------------------------------


@st.composite
def scenes(draw):
    """A random image size and up to 4 random rectangles (class, row0, row1, col0, col1, crowd)."""
    height = draw(st.integers(6, 40))
    width = draw(st.integers(6, 40))
    objects = []
    for _ in range(draw(st.integers(0, 4))):
        row0 = draw(st.integers(0, height - 1))
        col0 = draw(st.integers(0, width - 1))
        row1 = draw(st.integers(row0 + 1, height))
        col1 = draw(st.integers(col0 + 1, width))
        objects.append((draw(st.integers(0, 4)), row0, row1, col0, col1, draw(st.booleans())))
    image_size = draw(st.sampled_from([16, 24, 40]))
    min_scale = draw(st.floats(0.2, 1.5))
    max_scale = draw(st.floats(min_scale, 2.0))
    # ResizeScale cannot shrink a side below one pixel (PIL refuses a 0-pixel image).
    assume(min(height, width) * image_size * min_scale / max(height, width) >= 1)
    seed = draw(st.integers(0, 2**31 - 1))
    use_rle = draw(st.booleans())
    return height, width, objects, image_size, min_scale, max_scale, seed, use_rle


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_lsj_mappers_property(scene):
    """LSJ on random scenes: masks stay binary, inside the image and off the padding, boxes are
    the masks' tight boxes, crowd objects never appear, panoptic segments do not overlap, and the
    image pixels move with the masks."""
    import pycocotools.mask as mask_util

    height, width, objects, image_size, min_scale, max_scale, seed, use_rle = scene
    augmentations = lambda: [  # noqa: E731
        T.RandomFlip(),
        T.ResizeScale(min_scale, max_scale, image_size, image_size, interp=Image.NEAREST),
        T.FixedSizeCrop((image_size, image_size)),
    ]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        image = np.zeros((height, width, 3), np.uint8)
        segment_ids = np.zeros((height, width), np.int64)
        annotations, segments = [], []
        for index, (class_id, row0, row1, col0, col1, crowd) in enumerate(objects):
            mask = np.zeros((height, width), bool)
            mask[row0:row1, col0:col1] = True
            segment_ids[mask] = index + 1
            image[mask] = 255 if not crowd else 0
            if use_rle:
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": [height, width], "counts": rle["counts"].decode()}
            else:
                segmentation = [[col0, row0, col1, row0, col1, row1, col0, row1]]
            annotations.append(
                {
                    "category_id": class_id,
                    "segmentation": segmentation,
                    "bbox": [col0, row0, col1 - col0, row1 - row0],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "iscrowd": int(crowd),
                }
            )
            segments.append({"id": index + 1, "category_id": class_id, "iscrowd": int(crowd)})
        Image.fromarray(image).save(folder / "image.png")
        Image.fromarray(ids_to_rgb(segment_ids)).save(folder / "panoptic.png")
        base = {
            "file_name": str(folder / "image.png"),
            "image_id": 1,
            "height": height,
            "width": width,
        }

        np.random.seed(seed % 2**32)
        instance_output = COCOInstanceLSJDatasetMapper(
            True, augmentations=augmentations(), image_format="RGB", num_classes=5
        )({**base, "annotations": annotations})
        np.random.seed(seed % 2**32)
        panoptic_output = COCOPanopticLSJDatasetMapper(
            True, augmentations=augmentations(), image_format="RGB", num_classes=5
        )({**base, "pan_seg_file_name": str(folder / "panoptic.png"), "segments_info": segments})

    for output in (instance_output, panoptic_output):
        padding = output["padding_mask"]
        assert output["image"].shape == (3, image_size, image_size)
        check_instances(output["instances"], (image_size, image_size), padding, num_classes=5)
        assert len(output["instances"]) <= sum(not o[5] for o in objects)
    # The same random draws gave both mappers the same geometry.
    assert torch.equal(instance_output["image"], panoptic_output["image"])
    assert torch.equal(instance_output["padding_mask"], panoptic_output["padding_mask"])
    panoptic_masks = panoptic_output["instances"].gt_masks.tensor
    assert panoptic_masks.sum(0).max() <= 1 if len(panoptic_masks) else True
    # Non-crowd objects are white in the image and the image is resampled with nearest
    # neighbours here, so the visible (panoptic) masks must cover exactly the white pixels:
    # masks really moved with the image.
    white = (panoptic_output["image"] == 255).all(0)
    visible = panoptic_masks.any(0) if len(panoptic_masks) else torch.zeros_like(white)
    assert torch.equal(visible, white & ~panoptic_output["padding_mask"])
    instance_masks = instance_output["instances"].gt_masks.tensor
    if len(instance_masks):
        assert not (visible & ~instance_masks.any(0)).any()
    else:
        assert not visible.any()


def test_configs_build_every_mapper_in_both_modes(coco, ade):
    """from_config works for each mapper and mode with the project's config keys."""
    names = {
        "coco_panoptic_lsj": coco["panoptic_name"],
        "coco_instance_lsj": coco["instance_name"],
        "mask_former_semantic": ade["semantic_name"],
        "mask_former_panoptic": ade["panoptic_name"],
        "detr_detection": coco["instance_name"],
    }
    for mapper_name, dataset in names.items():
        cfg = make_cfg(mapper_name, dataset)
        cfg.INPUT.COLOR_AUG_SSD = True
        for is_train in (True, False):
            mapper = build_dataset_mapper(cfg, is_train)
            assert mapper.is_train is is_train
    assert json.loads(json.dumps(MetadataCatalog.get(ade["panoptic_name"]).stuff_colors))


# ---- what the mappers share: one error for non-panoptic dicts, one padding rule --------------


@pytest.mark.parametrize(
    "mapper_cls, mapper_name",
    [
        (COCOPanopticLSJDatasetMapper, "coco_panoptic_lsj"),
        (MaskFormerPanopticDatasetMapper, "mask_former_panoptic"),
    ],
)
@pytest.mark.parametrize("missing_key", ["pan_seg_file_name", "segments_info"])
def test_panoptic_mappers_name_image_and_mapper_for_non_panoptic_dicts(
    coco, mapper_cls, mapper_name, missing_key
):
    mapper = mapper_cls(True, augmentations=[], image_format="RGB")
    record = {k: v for k, v in coco["panoptic_dicts"][0].items() if k != missing_key}
    with pytest.raises(KeyError, match=rf"000000000001\.png.*pan_seg_file_name.*{mapper_name}"):
        mapper(record)


@pytest.mark.parametrize("mapper_cls", [COCOInstanceLSJDatasetMapper, DETRDetectionDatasetMapper])
def test_instance_mappers_name_image_and_annotation_for_unknown_category(coco, mapper_cls):
    mapper = mapper_cls(True, augmentations=[], image_format="RGB", num_classes=2)
    unknown = copy.deepcopy(coco["instance_dicts"][0])
    unknown["annotations"][0]["category_id"] = 5
    with pytest.raises(ValueError, match=r"#0 of .*000000000001\.png.*unknown category id 5"):
        mapper(unknown)


def test_mask_former_panoptic_size_divisibility_padding(ade):
    """Padding to a multiple of 20 (32 x 48 -> 40 x 60): image 0, sem_seg ignore, no segment
    mask on the padding, and the unpadded part equal to the mapping without padding."""
    kwargs = {"augmentations": [T.RandomFlip(prob=1.0)], "image_format": "RGB", "num_classes": 150}
    record = ade["panoptic_dicts"][0]
    unpadded = MaskFormerPanopticDatasetMapper(True, **kwargs)(record)
    padded = MaskFormerPanopticDatasetMapper(True, size_divisibility=20, **kwargs)(record)
    assert padded["image"].shape == (3, 40, 60) and padded["sem_seg"].shape == (40, 60)
    padding = padded["padding_mask"]
    assert padding[HEIGHT:].all() and padding[:, WIDTH:].all()
    assert not padding[:HEIGHT, :WIDTH].any()
    assert (padded["image"][:, padding] == 0).all() and (padded["sem_seg"][padding] == 255).all()
    check_instances(padded["instances"], (40, 60), padding, num_classes=150)
    assert torch.equal(padded["image"][:, :HEIGHT, :WIDTH], unpadded["image"])
    assert torch.equal(padded["sem_seg"][:HEIGHT, :WIDTH], unpadded["sem_seg"])
    assert padded["instances"].gt_classes.tolist() == unpadded["instances"].gt_classes.tolist()
    assert torch.equal(
        padded["instances"].gt_masks.tensor[:, :HEIGHT, :WIDTH],
        unpadded["instances"].gt_masks.tensor,
    )
