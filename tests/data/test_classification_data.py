"""Classification mapper and evaluator."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from PIL import Image

from clusterformer import add_clusterformer_config
from clusterformer.data.dataset_mappers import build_dataset_mapper
from clusterformer.data.dataset_mappers.augmentations import random_erase_
from clusterformer.evaluation.classification_evaluation import ClassificationEvaluator


def _cfg():
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "classification"
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.CLASSIFICATION.TRAIN_CROP = 32
    cfg.INPUT.CLASSIFICATION.TEST_RESIZE = 36
    cfg.INPUT.CLASSIFICATION.TEST_CROP = 32
    return cfg


@pytest.fixture
def image_file(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: channel order is visible
    path = tmp_path / "red.png"
    Image.fromarray(rgb).save(path)
    return str(path)


def test_train_and_test_mapper_shapes(image_file):
    cfg = _cfg()
    for is_train in (True, False):
        out = build_dataset_mapper(cfg, is_train)(
            {"file_name": image_file, "image_id": 0, "label": 3}
        )
        assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.uint8
        assert out["label"] == 3
        assert (out["height"], out["width"]) == (32, 32)


def test_test_mapper_is_deterministic_and_keeps_channel_order(image_file):
    cfg = _cfg()
    mapper = build_dataset_mapper(cfg, False)
    a = mapper({"file_name": image_file, "image_id": 0, "label": 0})["image"]
    b = mapper({"file_name": image_file, "image_id": 0, "label": 0})["image"]
    assert torch.equal(a, b)
    assert a[0].float().mean() == pytest.approx(200, abs=1) and a[2].max() == 0
    cfg.INPUT.FORMAT = "BGR"
    bgr = build_dataset_mapper(cfg, False)({"file_name": image_file, "image_id": 0, "label": 0})
    assert torch.equal(bgr["image"], a.flip(0))


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(Exception, match="broken.png"):
        build_dataset_mapper(_cfg(), True)({"file_name": str(bad), "image_id": 0, "label": 0})


def test_random_erasing_fills_a_box():
    torch.manual_seed(0)
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    random_erase_(img, probability=1.0)
    changed = (img != 0).any(0)
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert changed.sum() > 0
    # the changed pixels lie in one rectangle
    box = changed[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert box.float().mean() > 0.9
    untouched = torch.zeros(3, 8, 8, dtype=torch.uint8)
    assert random_erase_(untouched, probability=0.0).sum() == 0


def test_classification_evaluator_top1_top5():
    MetadataCatalog.get("_test_cls_eval").set(classes=[str(i) for i in range(10)])
    ev = ClassificationEvaluator("_test_cls_eval")
    ev.reset()
    inputs, outputs = [], []
    for i, label in enumerate([0, 1, 2, 3]):
        scores = torch.zeros(10)
        if i < 2:
            scores[label] = 1.0  # correct at top-1
        elif i == 2:
            scores[label] = 0.5
            scores[9] = 1.0  # correct at top-2 only
        else:
            scores[label] = -1.0  # wrong
            scores[4:9] = 1.0
        inputs.append({"image_id": i, "label": label})
        outputs.append({"class_scores": scores})
    ev.process(inputs, outputs)
    res = ev.evaluate()["classification"]
    assert res["top1"] == pytest.approx(50.0)
    assert res["top5"] == pytest.approx(75.0)
    assert res["num_images"] == 4
