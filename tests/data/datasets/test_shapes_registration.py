"""The shapes data set in Detectron2: registration, and Detectron2's own evaluators run unchanged.

Fed the ground truth as predictions, COCOEvaluator, COCOPanopticEvaluator and SemSegEvaluator
must give perfect scores on the val split, and lower ones for perturbed predictions.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import BitMasks, Instances
from PIL import Image

import clusterformer.d2  # noqa: F401  (registers the default shapes data sets)
from clusterformer.data.datasets.class_folder import register_class_folder
from clusterformer.data.datasets.mask_encoding import mask_bbox, rgb2id
from clusterformer.data.datasets.register_shapes import register_shapes
from clusterformer.data.datasets.shapes import ShapesConfig, is_up_to_date

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
CONFIG = ShapesConfig(
    num_train_images=3,
    num_val_images=12,
    min_visible_area=150,  # makes void pixels, which the evaluators must ignore
    classification_train_per_class=2,
    classification_val_per_class=3,
)
PREFIX = "shapes_d2test"
THINGS = ["circle", "square", "triangle", "star"]
ALL_CLASSES = THINGS + ["sky", "grass", "wall"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("d2") / "shapes")
    names = register_shapes(root, CONFIG, prefix=PREFIX)
    assert len(names) == 8
    assert not os.path.exists(root)  # registration alone does not generate
    yield root
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_default_names_are_registered_without_touching_the_disk(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys
        import clusterformer.d2
        from detectron2.data import DatasetCatalog, MetadataCatalog
        names = [f"{prefix}_{task}_{split}" for prefix in ("shapes", "shapes3k", "shapes_dense")
                 for task in ("panoptic", "instance", "sem_seg", "cls") for split in ("train", "val")]
        assert all(name in DatasetCatalog.list() for name in names)
        meta = MetadataCatalog.get("shapes_panoptic_val")
        assert meta.image_root == os.path.join(sys.argv[1], "shapes", "val"), meta.image_root
        meta = MetadataCatalog.get("shapes3k_panoptic_train")
        assert meta.image_root == os.path.join(sys.argv[1], "shapes_3k", "train"), meta.image_root
        meta = MetadataCatalog.get("shapes_dense_panoptic_train")
        assert meta.image_root == os.path.join(sys.argv[1], "shapes_dense", "train"), meta.image_root
        assert not os.path.exists(os.path.join(sys.argv[1], "shapes"))
        print("ok")
        """
    )
    env = {
        **os.environ,
        "DETECTRON2_DATASETS": str(tmp_path),
        "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert os.listdir(tmp_path) == []


def test_metadata(root):
    panoptic = MetadataCatalog.get(f"{PREFIX}_panoptic_val")
    assert panoptic.thing_classes == THINGS
    assert panoptic.stuff_classes == ALL_CLASSES
    assert len(panoptic.thing_colors) == 4 and len(panoptic.stuff_colors) == 7
    assert panoptic.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 5: 3}
    assert panoptic.stuff_dataset_id_to_contiguous_id == {
        1: 0,
        2: 1,
        3: 2,
        5: 3,
        10: 4,
        11: 5,
        13: 6,
    }
    assert panoptic.evaluator_type == "coco_panoptic_seg"
    assert (panoptic.ignore_label, panoptic.label_divisor) == (255, 1000)
    assert panoptic.image_root == os.path.join(root, "val")
    assert panoptic.panoptic_root == os.path.join(root, "panoptic_val")
    assert panoptic.panoptic_json == os.path.join(root, "annotations", "panoptic_val.json")
    assert panoptic.sem_seg_root == os.path.join(root, "panoptic_semseg_val")
    assert panoptic.json_file == os.path.join(root, "annotations", "instances_val.json")

    instance = MetadataCatalog.get(f"{PREFIX}_instance_val")
    assert (instance.evaluator_type, instance.thing_classes) == ("coco", THINGS)
    assert instance.json_file == panoptic.json_file
    semantic = MetadataCatalog.get(f"{PREFIX}_sem_seg_val")
    assert (semantic.evaluator_type, semantic.stuff_classes) == ("sem_seg", ALL_CLASSES)
    assert semantic.ignore_label == 255
    classification = MetadataCatalog.get(f"{PREFIX}_cls_val")
    assert (classification.evaluator_type, classification.classes) == ("classification", THINGS)
    assert classification.image_root == os.path.join(root, "classification", "val")


def test_dataset_dicts(root):
    panoptic = DatasetCatalog.get(f"{PREFIX}_panoptic_val")  # generates the data set
    assert is_up_to_date(root, CONFIG)
    assert len(panoptic) == 12
    for record in panoptic:
        assert set(record) == {
            "file_name",
            "image_id",
            "height",
            "width",
            "pan_seg_file_name",
            "sem_seg_file_name",
            "segments_info",
        }
        assert Image.open(record["file_name"]).size == (record["width"], record["height"])
        ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"])))
        for segment in record["segments_info"]:
            assert segment["isthing"] == (segment["category_id"] < 4)
            assert 0 <= segment["category_id"] < 7
            assert segment["bbox"] == mask_bbox(ids == segment["id"])

    instances = DatasetCatalog.get(f"{PREFIX}_instance_val")
    assert [r["image_id"] for r in instances] == [r["image_id"] for r in panoptic]
    categories = {a["category_id"] for r in instances for a in r["annotations"]}
    assert categories <= {0, 1, 2, 3}
    segmentations = [a["segmentation"] for r in instances for a in r["annotations"]]
    assert any(isinstance(s, dict) for s in segmentations)
    assert any(isinstance(s, list) for s in segmentations)

    semantic = DatasetCatalog.get(f"{PREFIX}_sem_seg_val")
    assert sorted((r["file_name"], r["sem_seg_file_name"]) for r in semantic) == sorted(
        (r["file_name"], r["sem_seg_file_name"]) for r in panoptic
    )

    classification = DatasetCatalog.get(f"{PREFIX}_cls_val")
    assert len(classification) == 12
    for record in classification:
        assert os.path.basename(os.path.dirname(record["file_name"])) == THINGS[record["label"]]


def test_register_class_folder(tmp_path):
    for name in ["a/1.png", "b/2.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    register_class_folder("cf_test_explicit", str(tmp_path), ["b", "a"], extra="x")
    register_class_folder("cf_test_default", str(tmp_path))
    try:
        meta = MetadataCatalog.get("cf_test_explicit")
        assert (meta.classes, meta.image_root, meta.evaluator_type, meta.extra) == (
            ["b", "a"],
            str(tmp_path),
            "classification",
            "x",
        )
        explicit = DatasetCatalog.get("cf_test_explicit")
        assert [(os.path.basename(d["file_name"]), d["label"]) for d in explicit] == [
            ("2.png", 0),
            ("1.png", 1),
        ]
        default = DatasetCatalog.get("cf_test_default")
        assert [(os.path.basename(d["file_name"]), d["label"]) for d in default] == [
            ("1.png", 0),
            ("2.png", 1),
        ]
        assert MetadataCatalog.get("cf_test_default").classes == ["a", "b"]
    finally:
        for name in ("cf_test_explicit", "cf_test_default"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


# ---- the standard evaluators, fed the ground truth ---------------------------------------------


def _instances_from_annotations(record, relabel_every_other=False):
    """Ground-truth annotations as predicted Instances (score 1), through detectron2's utils."""
    gt = annotations_to_instances(
        record["annotations"], (record["height"], record["width"]), mask_format="bitmask"
    )
    classes = gt.gt_classes.clone()
    if relabel_every_other:
        classes[::2] = (classes[::2] + 1) % 4
    predictions = Instances((record["height"], record["width"]))
    predictions.pred_boxes = gt.gt_boxes
    predictions.pred_masks = gt.gt_masks.tensor
    predictions.scores = torch.ones(len(gt))
    predictions.pred_classes = classes
    return predictions


def _instances_from_panoptic(record):
    ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"])))
    things = [s for s in record["segments_info"] if s["isthing"]]
    masks = BitMasks(torch.from_numpy(np.stack([ids == s["id"] for s in things])))
    predictions = Instances((record["height"], record["width"]))
    predictions.pred_masks = masks.tensor
    predictions.pred_boxes = masks.get_bounding_boxes()
    predictions.scores = torch.ones(len(things))
    predictions.pred_classes = torch.tensor([s["category_id"] for s in things])
    return predictions


def _coco_scores(dataset_name, make_predictions):
    evaluator = COCOEvaluator(dataset_name, tasks=("bbox", "segm"), distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):
        evaluator.process([record], [{"instances": make_predictions(record)}])
    results = evaluator.evaluate()
    return results["bbox"]["AP"], results["segm"]["AP"]


def test_coco_evaluator_on_ground_truth(root):
    name = f"{PREFIX}_instance_val"
    assert _coco_scores(name, _instances_from_annotations) == (
        pytest.approx(100.0),
        pytest.approx(100.0),
    )
    box_ap, mask_ap = _coco_scores(
        name, lambda r: _instances_from_annotations(r, relabel_every_other=True)
    )
    assert box_ap < 80 and mask_ap < 80
    # The panoptic split evaluates instances against its json_file (the instances JSON): the
    # thing segments of the panoptic PNGs are exactly those instances.
    assert _coco_scores(f"{PREFIX}_panoptic_val", _instances_from_panoptic) == (
        pytest.approx(100.0),
        pytest.approx(100.0),
    )


def _panoptic_scores(perturb):
    name = f"{PREFIX}_panoptic_val"
    evaluator = COCOPanopticEvaluator(name)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"])))
        segments = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in record["segments_info"]
        ]
        if perturb:  # every first thing gets the next thing class
            first_thing = next(s for s in segments if s["isthing"])
            first_thing["category_id"] = (first_thing["category_id"] + 1) % 4
        panoptic = torch.from_numpy(ids.astype(np.int32))
        evaluator.process([record], [{"panoptic_seg": (panoptic, segments)}])
    return evaluator.evaluate()["panoptic_seg"]


def test_coco_panoptic_evaluator_on_ground_truth(root):
    scores = _panoptic_scores(perturb=False)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert scores[key] == pytest.approx(100.0), (key, scores)
    perturbed = _panoptic_scores(perturb=True)
    assert perturbed["PQ_th"] < 90 and perturbed["PQ_st"] == pytest.approx(100.0)


def _semantic_miou(name, perturb):
    evaluator = SemSegEvaluator(name, distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        labels = np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64)
        labels = np.where(labels == 255, 0, labels)  # void pixels are not scored
        if perturb:
            labels[: labels.shape[0] // 4] = 6  # the top quarter predicted as wall
        logits = torch.nn.functional.one_hot(torch.from_numpy(labels), 7).permute(2, 0, 1)
        evaluator.process([record], [{"sem_seg": logits.float()}])
    return evaluator.evaluate()["sem_seg"]["mIoU"]


@pytest.mark.parametrize("task", ["sem_seg", "panoptic"])
def test_sem_seg_evaluator_on_ground_truth(root, task):
    name = f"{PREFIX}_{task}_val"
    assert _semantic_miou(name, perturb=False) == pytest.approx(100.0)
    assert _semantic_miou(name, perturb=True) < 90


def test_train_split_is_registered_and_consistent(root):
    train = DatasetCatalog.get(f"{PREFIX}_panoptic_train")
    assert len(train) == CONFIG.num_train_images
    assert len(DatasetCatalog.get(f"{PREFIX}_cls_train")) == 8
    val_ids = {r["image_id"] for r in DatasetCatalog.get(f"{PREFIX}_panoptic_val")}
    assert not val_ids & {r["image_id"] for r in train}
    assert dataclasses.asdict(CONFIG)["num_train_images"] == 3
