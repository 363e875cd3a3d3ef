"""Bad inputs get a clear error or a documented handling (docs/reliability.md), end to end.

Covers images of every kind through the mappers, images smaller than a window or of extreme
aspect ratio through the nano models, images without annotations, degenerate boxes and polygons,
broken RLE, missing data set folders, data set JSONs that point outside the data set, and
unknown config keys.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BoxMode
from PIL import Image
from train_net_helpers import CLS_CONFIG, PANOPTIC_CONFIG, REPO, train_net_env

from clusterformer.d2.config_files import load_config
from clusterformer.data.dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    DETRDetectionDatasetMapper,
    build_dataset_mapper,
)
from clusterformer.data.dataset_mappers.classification import ClassificationDatasetMapper
from clusterformer.data.datasets.path_safety import UnsafePathError
from clusterformer.data.datasets.register_formats import load_coco_instances_checked
from clusterformer.engine import Trainer

EXIF_ORIENTATION = 0x0112


def save(path, array, mode=None, **kwargs):
    Image.fromarray(array, mode=mode).save(path, **kwargs)
    return str(path)


def panoptic_record(tmp_path, image_file, height, width, segments_info=()):
    """A panoptic dict whose PNG is all void (id 0) unless segments are painted by the caller."""
    png = save(tmp_path / "pan.png", np.zeros((height, width, 3), np.uint8))
    return {
        "file_name": image_file,
        "image_id": 1,
        "height": height,
        "width": width,
        "pan_seg_file_name": png,
        "segments_info": list(segments_info),
    }


# ---- images of every kind ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["grey", "rgba", "grey16", "palette"])
def test_mappers_read_every_image_kind_as_correct_8_bit_rgb(tmp_path, kind):
    rgb = (np.arange(8 * 12 * 3).reshape(8, 12, 3) * 5 % 256).astype(np.uint8)
    if kind == "grey":
        path, expected = save(tmp_path / "g.png", rgb[:, :, 0]), np.repeat(rgb[:, :, :1], 3, 2)
    elif kind == "rgba":
        rgba = np.concatenate([rgb, np.full((8, 12, 1), 9, np.uint8)], axis=2)
        path, expected = save(tmp_path / "a.png", rgba, mode="RGBA"), rgb
    elif kind == "grey16":
        values = rgb[:, :, 0].astype(np.uint16) * 256 + 77
        path, expected = save(tmp_path / "g16.png", values), np.repeat(rgb[:, :, :1], 3, 2)
    else:
        image = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=8)
        image.save(tmp_path / "p.png")
        path, expected = str(tmp_path / "p.png"), np.asarray(image.convert("RGB"))
    expected_chw = torch.from_numpy(expected.transpose(2, 0, 1).copy())

    training = COCOPanopticLSJDatasetMapper(
        True, augmentations=[], image_format="RGB", num_classes=3
    )
    out = training(panoptic_record(tmp_path, path, 8, 12))
    assert torch.equal(out["image"], expected_chw)
    testing = COCOPanopticLSJDatasetMapper(False, augmentations=[], image_format="BGR")
    assert torch.equal(testing({"file_name": path, "image_id": 1})["image"], expected_chw.flip(0))
    classification = ClassificationDatasetMapper(
        False,
        image_format="RGB",
        train_crop=8,
        crop_scale=(1.0, 1.0),
        horizontal_flip=False,
        rand_augment_magnitude=None,
        random_erasing=0.0,
        test_resize=8,
        test_crop=8,
    )
    out = classification({"file_name": path, "image_id": 1, "label": 0})
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 8, 8)
    assert torch.equal(out["image"], expected_chw[:, :, 2:10])  # centre crop of the width


def test_exif_rotated_image_needs_its_displayed_size_in_the_record(tmp_path):
    stored = np.zeros((8, 12, 3), np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = 6  # displayed rotated: 12 high, 8 wide
    image.save(tmp_path / "r.png", exif=exif.tobytes())
    mapper = COCOPanopticLSJDatasetMapper(False, augmentations=[], image_format="RGB")
    out = mapper({"file_name": str(tmp_path / "r.png"), "image_id": 1, "height": 12, "width": 8})
    assert out["image"].shape == (3, 12, 8)
    with pytest.raises(SizeMismatchError, match=r"r\.png"):
        mapper({"file_name": str(tmp_path / "r.png"), "image_id": 1, "height": 8, "width": 12})


def test_truncated_image_names_the_file_in_every_mapper(tmp_path):
    path = tmp_path / "cut.jpg"
    save(path, (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:300])
    cfg = load_config(CLS_CONFIG)
    for mapper in (
        build_dataset_mapper(cfg, is_train=True),
        COCOPanopticLSJDatasetMapper(False, augmentations=[], image_format="RGB"),
        DETRDetectionDatasetMapper(True, augmentations=[], image_format="RGB"),
    ):
        with pytest.raises(OSError, match=r"cut\.jpg"):
            mapper({"file_name": str(path), "image_id": 1, "label": 0, "annotations": []})


# ---- tiny images, extreme aspect ratios, no annotations: through the models -----------------


@pytest.fixture(scope="module")
def panoptic_model():
    torch.manual_seed(0)
    cfg = load_config(PANOPTIC_CONFIG)
    return cfg, Trainer.build_model(cfg)


SIZES = [(7, 7), (1, 1), (32, 2000), (1, 2000), (2000, 1)]


@pytest.mark.parametrize("height, width", SIZES)
def test_segmenter_handles_tiny_and_extreme_images_without_annotations(
    tmp_path, panoptic_model, height, width
):
    """Images below one 32-pixel stride, below one window, or of aspect ratio up to 1:3000, with
    no segment at all: training gives a finite loss with gradients, inference predicts at the
    original size. (A resize never makes a side 0 pixels: the 1 x 2000 image becomes 1 x 160.)"""
    cfg, model = panoptic_model
    image = save(
        tmp_path / "x.png",
        (np.random.default_rng(1).random((height, width, 3)) * 255).astype(np.uint8),
    )
    record = panoptic_record(tmp_path, image, height, width)

    np.random.seed(0)
    train_input = build_dataset_mapper(cfg, is_train=True)(copy.deepcopy(record))
    assert len(train_input["instances"]) == 0
    model.train()
    losses = model([train_input])
    total = sum(losses.values())
    assert torch.isfinite(total)
    model.zero_grad()
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    test_input = build_dataset_mapper(cfg, is_train=False)(copy.deepcopy(record))
    assert min(test_input["image"].shape[-2:]) >= 1
    model.eval()
    with torch.no_grad():
        (result,) = model([test_input])
    assert result["sem_seg"].shape == (7, height, width) and torch.isfinite(result["sem_seg"]).all()
    assert result["panoptic_seg"][0].shape == (height, width)
    assert result["instances"].image_size == (height, width)


@pytest.mark.parametrize("height, width", [(5, 5), (2, 300), (300, 2)])
def test_classifier_handles_tiny_and_extreme_images(tmp_path, height, width):
    cfg = load_config(CLS_CONFIG)
    model = Trainer.build_model(cfg)
    image = save(tmp_path / "x.png", np.full((height, width, 3), 100, np.uint8))
    record = {"file_name": image, "image_id": 1, "label": 1}
    batch = [build_dataset_mapper(cfg, is_train=True)(dict(record)) for _ in range(2)]
    model.train()
    loss = model(batch)["loss_cls"]
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        (result,) = model([build_dataset_mapper(cfg, is_train=False)(dict(record))])
    assert torch.isclose(result["class_scores"].sum(), torch.tensor(1.0))


def test_instance_image_without_annotations_trains(tmp_path, panoptic_model):
    _, model = panoptic_model
    image = save(tmp_path / "x.png", np.zeros((24, 24, 3), np.uint8))
    mapper = COCOInstanceLSJDatasetMapper(
        True, augmentations=[T.FixedSizeCrop((32, 32))], image_format="RGB", num_classes=4
    )
    sample = mapper(
        {"file_name": image, "image_id": 1, "height": 24, "width": 24, "annotations": []}
    )
    assert len(sample["instances"]) == 0 and sample["padding_mask"][24:].all()
    model.train()
    assert torch.isfinite(sum(model([sample]).values()))


# ---- degenerate annotations ---------------------------------------------------------------


def detection_record(tmp_path, annotations, size=(20, 30)):
    image = save(tmp_path / "d.png", np.zeros((*size, 3), np.uint8))
    return {
        "file_name": image,
        "image_id": 1,
        "height": size[0],
        "width": size[1],
        "annotations": annotations,
    }


def box(bbox, mode=BoxMode.XYWH_ABS, category=0, **extra):
    return {"bbox": bbox, "bbox_mode": mode, "category_id": category, "iscrowd": 0, **extra}


def test_degenerate_boxes_are_dropped_and_malformed_ones_raise(tmp_path):
    mapper = DETRDetectionDatasetMapper(True, augmentations=[], image_format="RGB", num_classes=2)
    kept = box([2, 3, 5, 4])
    out = mapper(
        detection_record(
            tmp_path,
            [
                kept,
                box([6, 6, 0, 4]),  # zero width
                box([6, 6, 3, 0]),  # zero height
                box([40, 2, 5, 5]),  # right of the 30-pixel-wide image
                box([-9, -9, 4, 4]),  # above-left of it
                box([25, 15, 10, 10]),  # partly outside: clipped
            ],
        )
    )
    assert out["instances"].gt_boxes.tensor.tolist() == [[2, 3, 7, 7], [25, 15, 30, 20]]

    for bad, message in [
        (box([5, 5, -3, 4]), "negative width or height"),
        (box([8, 5, 3, 9], mode=BoxMode.XYXY_ABS), "negative width or height"),
        (box([1, 1, float("nan"), 4]), "4 finite numbers"),
        (box([1, 1, 4]), "4 finite numbers"),
    ]:
        with pytest.raises(ValueError, match=rf"#1 of .*d\.png.*{message}"):
            mapper(detection_record(tmp_path, [kept, bad]))


def polygon_record(tmp_path, segmentation):
    return detection_record(
        tmp_path,
        [
            box([2, 2, 8, 8], segmentation=segmentation),
            box([0, 0, 4, 4], segmentation=[[0, 0, 4, 0, 4, 4, 0, 4]]),
        ],
    )


@pytest.mark.parametrize(
    "segmentation",
    [
        [[1, 1, 9, 9]],  # two points
        [[1, 1, 9, 9, 5]],  # odd number of coordinates
        [[1, 1, 5, 5, 9, 9]],  # collinear: zero area
        [[4, 4, 4, 4, 4, 4, 4, 4]],  # one point repeated
        [],  # no polygon
    ],
)
def test_degenerate_polygons_give_no_instance(tmp_path, segmentation):
    for mapper in (
        COCOInstanceLSJDatasetMapper(True, augmentations=[], image_format="RGB", num_classes=2),
        DETRDetectionDatasetMapper(
            True, augmentations=[], image_format="RGB", num_classes=2, mask_on=True
        ),
    ):
        out = mapper(polygon_record(tmp_path, segmentation))
        assert len(out["instances"]) == 1  # only the valid second annotation
        assert out["instances"].gt_masks.tensor[0].sum() == 16


@pytest.mark.parametrize(
    "segmentation, message",
    [
        ([[1, 1, float("nan"), 1, 5, 5]], "non-finite"),
        ([[1, 1, float("inf"), 1, 5, 5]], "non-finite"),
        ([[1, 1, 1e8, 1, 1e8, 1e8]], "far outside"),
        ({"size": [20, 30], "counts": [5, 3]}, "covers 8 pixels"),
        ({"size": [20, 30], "counts": [500, -3, 103]}, "negative"),
        ({"size": [20, 30], "counts": ""}, "covers 0 pixels"),
        ({"size": [20, 30], "counts": "0a"}, "ends inside a number"),
        ({"size": [10, 30], "counts": [300]}, "has size"),
    ],
)
def test_broken_segmentations_raise_before_pycocotools_sees_them(tmp_path, segmentation, message):
    """NaN / inf / huge polygon coordinates hang or crash pycocotools' rasteriser (the process
    dies with a segfault); short RLE runs make it return uninitialised memory as a mask."""
    mapper = COCOInstanceLSJDatasetMapper(True, augmentations=[], image_format="RGB", num_classes=2)
    with pytest.raises(ValueError, match=rf"annotation #0 of .*d\.png.*{message}|{message}.*#0"):
        mapper(polygon_record(tmp_path, segmentation))


def test_valid_compressed_rle_still_decodes(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[3:9, 4:15] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    mapper = COCOInstanceLSJDatasetMapper(True, augmentations=[], image_format="RGB", num_classes=2)
    for counts in (rle["counts"], rle["counts"].decode()):
        out = mapper(polygon_record(tmp_path, {"size": [20, 30], "counts": counts}))
        assert torch.equal(out["instances"].gt_masks.tensor[0], torch.from_numpy(mask.astype(bool)))


# ---- data sets ----------------------------------------------------------------------------


def write_instances_json(tmp_path, file_name, category_id=1):
    (tmp_path / "images").mkdir(exist_ok=True)
    content = {
        "images": [{"id": 1, "file_name": file_name, "height": 4, "width": 4}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": category_id,
                "bbox": [0, 0, 2, 2],
                "area": 4,
                "iscrowd": 0,
                "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]],
            }
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content))
    return str(path)


@pytest.mark.parametrize("file_name", ["../../outside.png", "/etc/hostname"])
def test_coco_instances_outside_the_image_folder_are_rejected(tmp_path, file_name):
    json_file = write_instances_json(tmp_path, file_name)
    with pytest.raises(UnsafePathError, match=r"instances\.json.*image id 1"):
        load_coco_instances_checked(json_file, str(tmp_path / "images"), "reliability_coco")


def test_coco_instances_unknown_category_and_missing_files(tmp_path):
    json_file = write_instances_json(tmp_path, "1.png", category_id=9)
    with pytest.raises(KeyError, match="category_id=9"):
        load_coco_instances_checked(json_file, str(tmp_path / "images"), "reliability_coco")
    with pytest.raises(FileNotFoundError, match=r"reliability_coco.*instances JSON.*nothing\.json"):
        load_coco_instances_checked(
            str(tmp_path / "nothing.json"), str(tmp_path / "images"), "reliability_coco"
        )


def test_builtin_coco_and_imagenet_name_their_missing_folders(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog

    from clusterformer.d2 import use_checked_builtin_loaders

    # Detectron2's own COCO loader is replaced only on request, as train_net.py and the demo ask.
    use_checked_builtin_loaders()

    with pytest.raises(
        FileNotFoundError, match=r"coco_2017_val.*instances JSON.*datasets/README\.md"
    ):
        DatasetCatalog.get("coco_2017_val")
    with pytest.raises(FileNotFoundError, match=r"imagenet_val.*class folder"):
        DatasetCatalog.get("imagenet_val")


# ---- config keys ----------------------------------------------------------------------------


def test_unknown_config_keys_name_the_key_and_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "MODEL:\n  CLUSTERFORMER_BACKBONE:\n    DEPHTS: [1, 1, 1, 1]\n"
    )
    (tmp_path / "leaf.yaml").write_text("_BASE_: base.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    with pytest.raises(
        KeyError,
        match=r"MODEL\.CLUSTERFORMER_BACKBONE\.DEPHTS.*base\.yaml.*included by.*leaf\.yaml.*did you mean MODEL\.CLUSTERFORMER_BACKBONE\.DEPTHS",
    ):
        load_config(str(tmp_path / "leaf.yaml"))
    with pytest.raises(
        KeyError, match=r"'SOLVER\.MAX_ITR' given on the command line.*SOLVER\.MAX_ITER"
    ):
        load_config(CLS_CONFIG, ["SOLVER.MAX_ITR", "3"])
    with pytest.raises(ValueError, match=r"SOLVER\.MAX_ITER.*command line.*Type mismatch"):
        load_config(CLS_CONFIG, ["SOLVER.MAX_ITER", "many"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        load_config(CLS_CONFIG, ["SOLVER.MAX_ITER"])
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml"):
        load_config(str(tmp_path / "nowhere.yaml"))


def test_train_net_reports_an_unknown_key_of_a_config_file(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(f"_BASE_: {os.path.join(REPO, CLS_CONFIG)}\nSOLVER:\n  MAX_ITERS: 3\n")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", str(config)],
        cwd=REPO,
        env=train_net_env({"OMP_NUM_THREADS": "1"}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "SOLVER.MAX_ITERS" in proc.stderr and "typo.yaml" in proc.stderr
