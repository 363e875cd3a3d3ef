"""The data set preparation scripts in datasets/, run on tiny fake data sets."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_segmentation_data import (
    ADE_PERSON,
    BANNER_CONTIGUOUS,
    BED,
    CAR_CONTIGUOUS,
    HEIGHT,
    PERSON_CONTIGUOUS,
    SKY,
    WALL,
    WIDTH,
    ids_to_rgb,
    make_ade,
    make_coco,
)
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "datasets"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DETECTRON2_DATASETS": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as png:
        return np.asarray(png)


# ---- COCO panoptic -> semantic -------------------------------------------------------------


def test_coco_semantic_from_panoptic_cli(tmp_path):
    fake = make_coco(tmp_path, split="val2017", num_images=3)
    result = run_script(
        "prepare_coco_semantic_annos_from_panoptic_annos",
        tmp_path,
        "--splits",
        "val2017",
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    scene = fake["scene"]
    outputs = sorted((fake["coco"] / "panoptic_semseg_val2017").glob("*.png"))
    assert len(outputs) == 3
    for output in outputs:
        semantic = read_png(output)
        assert semantic.dtype == np.uint8 and semantic.shape == (HEIGHT, WIDTH)
        expected = np.full((HEIGHT, WIDTH), 255, np.uint8)
        expected[scene["banner"]] = BANNER_CONTIGUOUS
        expected[scene["person"]] = PERSON_CONTIGUOUS
        expected[scene["car"]] = CAR_CONTIGUOUS  # crowd segments keep their class here
        np.testing.assert_array_equal(semantic, expected)


def test_coco_semantic_unknown_category_names_file_and_id(tmp_path):
    fake = make_coco(tmp_path, split="val2017", num_images=1)
    json_file = fake["coco"] / "annotations" / "panoptic_val2017.json"
    content = json.loads(json_file.read_text())
    content["annotations"][0]["segments_info"][0]["category_id"] = 999
    json_file.write_text(json.dumps(content))
    script = load_script("prepare_coco_semantic_annos_from_panoptic_annos")
    with pytest.raises(ValueError, match=r"000000000001\.png.*unknown category id 999"):
        script.convert_split(
            str(json_file),
            str(fake["coco"] / "panoptic_val2017"),
            str(tmp_path / "out"),
            script.coco_category_id_map(),
            workers=1,
        )


def test_coco_semantic_missing_inputs_are_reported(tmp_path, monkeypatch):
    script = load_script("prepare_coco_semantic_annos_from_panoptic_annos")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"panoptic_val2017\.json.*does not exist"):
        script.main(["--splits", "val2017"])

    fake = make_coco(tmp_path, split="val2017", num_images=1)
    (fake["coco"] / "panoptic_val2017" / "000000000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000000001\.png"):
        script.convert_split(
            str(fake["coco"] / "annotations" / "panoptic_val2017.json"),
            str(fake["coco"] / "panoptic_val2017"),
            str(tmp_path / "out"),
            script.coco_category_id_map(),
            workers=1,
        )


# ---- ADE20K semantic -----------------------------------------------------------------------


def test_ade20k_semantic_cli_shifts_labels(tmp_path):
    fake = make_ade(tmp_path)
    result = run_script("prepare_ade20k_sem_seg", tmp_path, "--workers", "1")
    assert result.returncode == 0, result.stderr
    raw = fake["scene"]["raw"]
    for split in ("training", "validation"):
        outputs = sorted((fake["ade"] / "annotations_detectron2" / split).glob("*.png"))
        assert len(outputs) == 2
        for output in outputs:
            labels = read_png(output)
            assert labels.dtype == np.uint8
            np.testing.assert_array_equal(labels[raw == 0], 255)
            np.testing.assert_array_equal(labels[raw > 0], raw[raw > 0] - 1)
    assert set(np.unique(labels)) == {WALL, SKY, BED, ADE_PERSON, 255}


def test_ade20k_semantic_rejects_bad_inputs(tmp_path):
    script = load_script("prepare_ade20k_sem_seg")
    with pytest.raises(FileNotFoundError, match="annotations"):
        script.convert_split(tmp_path / "annotations" / "training", tmp_path / "out", workers=1)

    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(bad)
    with pytest.raises(ValueError, match=r"bad\.png.*200"):
        script.convert_label_png(str(bad), str(tmp_path / "out.png"))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(ValueError, match=r"rgb\.png.*single-channel"):
        script.convert_label_png(str(rgb), str(tmp_path / "out.png"))


# ---- ADE20K panoptic -----------------------------------------------------------------------


def test_ade20k_panoptic_conversion(tmp_path):
    fake = make_ade(tmp_path, num_images=2)
    result = run_script("prepare_ade20k_pan_seg", tmp_path, "--workers", "2")
    assert result.returncode == 0, result.stderr
    scene = fake["scene"]
    content = json.loads((fake["ade"] / "ade20k_panoptic_val.json").read_text())
    assert len(content["categories"]) == 150
    assert [c["id"] for c in content["categories"]] == list(range(150))
    assert len(content["images"]) == len(content["annotations"]) == 2
    assert content["images"][0] == {
        "id": "ADE_val_00000001",
        "file_name": "ADE_val_00000001.jpg",
        "width": WIDTH,
        "height": HEIGHT,
    }

    annotation = content["annotations"][0]
    png = read_png(fake["ade"] / "ade20k_panoptic_val" / annotation["file_name"]).astype(np.int64)
    segment_ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
    by_category = {}
    for segment in annotation["segments_info"]:
        mask = segment_ids == segment["id"]
        # The JSON agrees with the PNG.
        assert segment["area"] == mask.sum() > 0
        rows, cols = np.nonzero(mask)
        assert segment["bbox"] == [
            cols.min(),
            rows.min(),
            cols.max() - cols.min() + 1,
            rows.max() - rows.min() + 1,
        ]
        by_category.setdefault(segment["category_id"], []).append(mask)
    assert sorted(by_category) == [WALL, SKY, BED, ADE_PERSON]
    assert len({s["id"] for s in annotation["segments_info"]}) == 4
    np.testing.assert_array_equal(by_category[BED][0], scene["bed"])
    # The person instance was pasted over two wall pixels.
    np.testing.assert_array_equal(by_category[ADE_PERSON][0], scene["person"])
    assert not by_category[WALL][0][scene["person"]].any()
    np.testing.assert_array_equal(by_category[SKY][0], (scene["raw"] == SKY + 1))
    # A thing class without an instance, and "other", are void (id 0).
    assert (segment_ids[scene["orphan_person"]] == 0).all()
    assert (segment_ids[scene["raw"] == 0] == 0).all()


def test_ade20k_panoptic_rejects_bad_inputs(tmp_path):
    script = load_script("prepare_ade20k_pan_seg")
    with pytest.raises(FileNotFoundError, match="annotations_instance"):
        fake = make_ade(tmp_path, num_images=1)
        for f in (fake["ade"] / "annotations_instance" / "validation").glob("*"):
            f.unlink()
        (fake["ade"] / "annotations_instance" / "validation").rmdir()
        script.convert_split(fake["ade"], "val", "validation", workers=1)

    ade = fake["ade"]
    image = ade / "images" / "training" / "ADE_train_00000001.jpg"
    semantic = ade / "annotations" / "training" / "ADE_train_00000001.png"
    instance = ade / "annotations_instance" / "training" / "ADE_train_00000001.png"
    mixed = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    mixed[:2, :2] = (1, 5, 0)
    mixed[2:4, :2] = (4, 5, 0)  # one instance index with two categories
    bad_instance = tmp_path / "mixed.png"
    Image.fromarray(mixed).save(bad_instance)
    with pytest.raises(ValueError, match=r"Instance 5 of .*mixed\.png"):
        script.convert_image(str(image), str(semantic), str(bad_instance), str(tmp_path / "o.png"))

    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 1), np.uint8)).save(small)
    with pytest.raises(ValueError, match=r"small\.png.*ADE_train_00000001\.jpg"):
        script.convert_image(str(image), str(small), str(instance), str(tmp_path / "o.png"))


def test_ids_to_rgb_roundtrip():
    ids = np.array([[0, 1, 300, 70000]])
    rgb = ids_to_rgb(ids).astype(np.int64)
    np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], ids)
