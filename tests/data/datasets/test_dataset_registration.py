"""Registration of the real data sets: names, metadata, lazy loading, clear errors when missing."""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, COCO_CATEGORIES
from fake_segmentation_data import (
    BANNER_CONTIGUOUS,
    BED,
    CAR_CONTIGUOUS,
    HEIGHT,
    PERSON_CONTIGUOUS,
    WIDTH,
    make_ade,
    make_coco,
)

import clusterformer.d2  # noqa: F401  (registers the data sets)
from clusterformer.data.datasets import (
    PanopticFiles,
    register_ade20k_panoptic,
    register_ade20k_semantic,
    register_coco_panoptic_with_sem_seg,
    use_checked_builtin_loaders,
)
from clusterformer.data.datasets.ade20k_categories import ADE20K_THING_IDS, ade20k_categories
from clusterformer.data.datasets.dataset_paths import datasets_root
from clusterformer.data.datasets.register_ade20k_panoptic import ade20k_panoptic_metadata
from clusterformer.data.datasets.register_coco_panoptic_semseg import coco_panoptic_metadata

SCRIPTS = Path(__file__).resolve().parents[3] / "datasets"


@pytest.fixture(autouse=True, scope="module")
def _checked_builtin_loaders():
    """The ADE20K semantic names as train_net.py and the demo use them (they ask for the checked
    loaders; import alone leaves Detectron2's registrations)."""
    use_checked_builtin_loaders()


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def run_prepare_main(name: str, monkeypatch, root: Path, *argv: str) -> None:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    module.main(list(argv))


def register_fake_coco(root: Path, split: str = "train2017") -> str:
    coco = root / "coco"
    name = unique_name("test_coco_panoptic_with_sem_seg")
    register_coco_panoptic_with_sem_seg(
        name,
        coco_panoptic_metadata(),
        PanopticFiles(
            str(coco / split),
            str(coco / f"panoptic_{split}"),
            str(coco / "annotations" / f"panoptic_{split}.json"),
            str(coco / f"panoptic_semseg_{split}"),
        ),
        str(coco / "annotations" / f"instances_{split}.json"),
    )
    return name


# ---- the registered names ------------------------------------------------------------------


def test_coco_panoptic_with_sem_seg_metadata():
    root = datasets_root()
    for split in ("train", "val"):
        name = f"coco_2017_{split}_panoptic_with_sem_seg"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco_panoptic_seg"
        assert meta.ignore_label == 255 and meta.label_divisor == 1000
        assert meta.panoptic_root == os.path.join(root, f"coco/panoptic_{split}2017")
        assert meta.panoptic_json == os.path.join(
            root, f"coco/annotations/panoptic_{split}2017.json"
        )
        assert meta.sem_seg_root == os.path.join(root, f"coco/panoptic_semseg_{split}2017")
        assert meta.image_root == os.path.join(root, f"coco/{split}2017")
        assert meta.json_file == os.path.join(root, f"coco/annotations/instances_{split}2017.json")
        assert meta.stuff_classes == [c["name"] for c in COCO_CATEGORIES]
        assert meta.stuff_colors == [c["color"] for c in COCO_CATEGORIES]
        assert len(meta.thing_classes) == 80 and meta.thing_classes[0] == "person"
        assert meta.thing_dataset_id_to_contiguous_id[1] == 0  # person
        assert meta.thing_dataset_id_to_contiguous_id[90] == 79  # toothbrush
        assert meta.stuff_dataset_id_to_contiguous_id[200] == 132  # rug-merged
        assert len(meta.stuff_dataset_id_to_contiguous_id) == 133
        assert set(meta.thing_dataset_id_to_contiguous_id.values()) == set(range(80))


def test_coco_instances_stay_detectron2s():
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"coco_2017_{split}")
        assert meta.evaluator_type == "coco"
        assert meta.json_file.endswith(f"instances_{split}2017.json")


def test_ade20k_metadata():
    root = os.path.join(datasets_root(), "ADEChallengeData2016")
    for split, directory in (("train", "training"), ("val", "validation")):
        semantic = MetadataCatalog.get(f"ade20k_sem_seg_{split}")
        assert semantic.evaluator_type == "sem_seg" and semantic.ignore_label == 255
        assert semantic.stuff_classes == ADE20K_SEM_SEG_CATEGORIES
        assert len(semantic.stuff_colors) == 150
        assert semantic.image_root == os.path.join(root, "images", directory)
        assert semantic.sem_seg_root == os.path.join(root, "annotations_detectron2", directory)

        panoptic = MetadataCatalog.get(f"ade20k_panoptic_{split}")
        assert panoptic.evaluator_type == "ade20k_panoptic_seg"
        assert panoptic.ignore_label == 255 and panoptic.label_divisor == 1000
        assert len(panoptic.stuff_classes) == 150 and len(panoptic.thing_classes) == 100
        assert panoptic.stuff_classes[BED] == "bed" and "bed" in panoptic.thing_classes
        assert panoptic.thing_dataset_id_to_contiguous_id == {i: i for i in ADE20K_THING_IDS}
        assert panoptic.stuff_dataset_id_to_contiguous_id == {i: i for i in range(150)}
        assert panoptic.stuff_colors == semantic.stuff_colors
        assert panoptic.get("json_file", None) is None
        assert panoptic.panoptic_json == os.path.join(root, f"ade20k_panoptic_{split}.json")
        assert panoptic.panoptic_root == os.path.join(root, f"ade20k_panoptic_{split}")


def test_ade20k_categories_table():
    categories = ade20k_categories()
    assert [c["name"] for c in categories] == ADE20K_SEM_SEG_CATEGORIES
    assert len({tuple(c["color"]) for c in categories}) == 150
    stuff = {c["name"] for c in categories if not c["isthing"]}
    assert {"wall", "sky", "floor", "road, route", "grass"} <= stuff
    things = {c["name"] for c in categories if c["isthing"]}
    assert {"bed", "person", "car", "chair", "clock", "flag"} <= things
    assert len(things) == 100
    assert ade20k_panoptic_metadata()["thing_classes"][0] == "bed"


# ---- loading: lazy, clear errors -----------------------------------------------------------


def test_registration_reads_nothing_and_use_reports_missing_folder(tmp_path):
    missing_root = tmp_path / "nowhere"
    name = register_fake_coco(missing_root)  # must not raise: nothing is read yet
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    assert str(missing_root / "coco" / "train2017") in message
    assert "datasets/README.md" in message

    ade_name = unique_name("test_ade_sem")
    register_ade20k_semantic(
        ade_name, str(missing_root / "images"), str(missing_root / "annotations_detectron2")
    )
    with pytest.raises(FileNotFoundError, match=r"nowhere/images.*datasets/README\.md"):
        DatasetCatalog.get(ade_name)


def test_missing_semantic_folder_points_to_prepare_script(tmp_path):
    make_coco(tmp_path)
    name = register_fake_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare_coco_semantic_annos_from_panoptic_annos"):
        DatasetCatalog.get(name)


def test_coco_panoptic_with_sem_seg_loads(tmp_path, monkeypatch):
    fake = make_coco(tmp_path)
    run_prepare_main(
        "prepare_coco_semantic_annos_from_panoptic_annos",
        monkeypatch,
        tmp_path,
        "--splits",
        "train2017",
        "--workers",
        "1",
    )
    name = register_fake_coco(tmp_path)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 2
    first = dicts[0]
    coco = fake["coco"]
    assert first["file_name"] == str(coco / "train2017" / "000000000001.png")
    assert first["pan_seg_file_name"] == str(coco / "panoptic_train2017" / "000000000001.png")
    assert first["sem_seg_file_name"] == str(
        coco / "panoptic_semseg_train2017" / "000000000001.png"
    )
    assert (first["image_id"], first["height"], first["width"]) == (1, HEIGHT, WIDTH)
    segments = {s["id"]: s for s in first["segments_info"]}
    assert segments[1001]["category_id"] == PERSON_CONTIGUOUS and segments[1001]["isthing"]
    assert segments[70000]["category_id"] == CAR_CONTIGUOUS and segments[70000]["iscrowd"] == 1
    assert segments[300]["category_id"] == BANNER_CONTIGUOUS and not segments[300]["isthing"]


def test_coco_panoptic_unknown_category_names_json_and_id(tmp_path):
    fake = make_coco(tmp_path)
    (fake["coco"] / "panoptic_semseg_train2017").mkdir()
    json_file = fake["coco"] / "annotations" / "panoptic_train2017.json"
    content = json.loads(json_file.read_text())
    content["annotations"][1]["segments_info"][2]["category_id"] = 4242
    json_file.write_text(json.dumps(content))
    name = register_fake_coco(tmp_path)
    with pytest.raises(ValueError, match=r"panoptic_train2017\.json.*unknown category id 4242"):
        DatasetCatalog.get(name)


def test_ade20k_semantic_and_panoptic_load(tmp_path, monkeypatch):
    fake = make_ade(tmp_path)
    ade = fake["ade"]
    run_prepare_main("prepare_ade20k_sem_seg", monkeypatch, tmp_path, "--workers", "1")
    run_prepare_main("prepare_ade20k_pan_seg", monkeypatch, tmp_path, "--workers", "1")

    semantic_name = unique_name("test_ade_sem")
    register_ade20k_semantic(
        semantic_name,
        str(ade / "images" / "validation"),
        str(ade / "annotations_detectron2" / "validation"),
    )
    semantic = DatasetCatalog.get(semantic_name)
    assert [os.path.basename(d["sem_seg_file_name"]) for d in semantic] == [
        "ADE_val_00000001.png",
        "ADE_val_00000002.png",
    ]
    assert MetadataCatalog.get(semantic_name).stuff_classes == ADE20K_SEM_SEG_CATEGORIES

    panoptic_name = unique_name("test_ade_pan")
    register_ade20k_panoptic(
        panoptic_name,
        ade20k_panoptic_metadata(),
        PanopticFiles(
            str(ade / "images" / "validation"),
            str(ade / "ade20k_panoptic_val"),
            str(ade / "ade20k_panoptic_val.json"),
            str(ade / "annotations_detectron2" / "validation"),
        ),
    )
    panoptic = DatasetCatalog.get(panoptic_name)
    assert len(panoptic) == 2
    record = panoptic[0]
    assert record["image_id"] == "ADE_val_00000001"
    assert record["file_name"] == str(ade / "images" / "validation" / "ADE_val_00000001.jpg")
    assert os.path.isfile(record["pan_seg_file_name"]) and os.path.isfile(
        record["sem_seg_file_name"]
    )
    isthing = {s["category_id"]: s["isthing"] for s in record["segments_info"]}
    assert isthing[BED] is True and isthing[0] is False

    # A JSON whose categories disagree with the 150-class table is refused.
    json_file = ade / "ade20k_panoptic_val.json"
    content = json.loads(json_file.read_text())
    content["categories"][0]["isthing"] = 1
    json_file.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"ade20k_panoptic_val\.json.*\(0, 1\)"):
        DatasetCatalog.get(panoptic_name)


def test_ade20k_sem_seg_names_were_replaced_with_checking_loaders(tmp_path):
    """Detectron2 registers ade20k_sem_seg_*; ours replaced it (same files, plus colours)."""
    meta = MetadataCatalog.get("ade20k_sem_seg_val")
    assert meta.image_root == os.path.join(
        datasets_root(), "ADEChallengeData2016/images/validation"
    )
    if not os.path.isdir(meta.image_root):
        with pytest.raises(FileNotFoundError, match="datasets/README.md"):
            DatasetCatalog.get("ade20k_sem_seg_val")
