"""Data sets registered with Detectron2's own API build, train and predict unchanged.

Detectron2's ``register_coco_instances`` (and the ``_separated`` data set of
``register_coco_panoptic_separated``) fill ``thing_classes`` only when the data set is loaded,
after the model is built; ``class_metadata`` reads them from the JSON first. Every route uses
the shapes validation files (COCO instances / panoptic JSON, panoptic and semantic PNGs),
registered under fresh names and removed afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Tuple

import pytest
import torch
from d2_config import make_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import (
    load_sem_seg,
    register_coco_instances,
    register_coco_panoptic,
    register_coco_panoptic_separated,
)
from train_net_helpers import PANOPTIC_CONFIG

from clusterformer import ClusterFormerPredictor
from clusterformer.data.datasets.class_metadata import (
    class_metadata,
    coco_json_class_metadata,
    read_coco_categories,
)
from clusterformer.data.datasets.register_formats import panoptic_metadata
from clusterformer.data.datasets.shapes import ensure_shapes
from clusterformer.data.datasets.shapes_spec import split_paths
from clusterformer.data.datasets.user_registration import run_registration_files
from clusterformer.engine import Trainer

INSTANCE_CONFIG = "configs/shapes/instance-segmentation/clusterformer_nano_boxes.yaml"
SHAPE_NAMES = ["circle", "square", "triangle", "star"]  # category ids 1, 2, 3, 5
_names = itertools.count()


@pytest.fixture
def shapes_val():
    return split_paths(ensure_shapes(), "val")


@pytest.fixture
def fresh_names():
    """Yields a function returning unused data set names; unregisters them afterwards."""
    made = []

    def fresh(kind: str) -> str:
        made.append(f"custom_{kind}_{next(_names)}")
        return made[-1]

    yield fresh
    for name in made:
        for registered in (name, name + "_separated", name + "_stuffonly"):
            if registered in DatasetCatalog.list():
                DatasetCatalog.remove(registered)
                MetadataCatalog.remove(registered)


def jpg_layout(tmp_path, shapes_val) -> Tuple[str, str]:
    """(image folder, instances JSON) in COCO's layout, which Detectron2's panoptic loaders
    assume: the images are ``<name>.jpg`` next to ``<name>.png`` labels (links to the shapes
    PNGs, which the readers recognise by content)."""
    image_root = tmp_path / "images"
    image_root.mkdir()
    for image in os.listdir(shapes_val.image_root):
        stem = os.path.splitext(image)[0]
        (image_root / f"{stem}.jpg").symlink_to(
            os.path.abspath(os.path.join(shapes_val.image_root, image))
        )
    with open(shapes_val.instances_json) as f:
        instances = json.load(f)
    for image in instances["images"]:
        image["file_name"] = os.path.splitext(image["file_name"])[0] + ".jpg"
    instances_json = tmp_path / "instances.json"
    instances_json.write_text(json.dumps(instances))
    return str(image_root), str(instances_json)


def build_trainer(tmp_path, config: str, train: str, test: str, *opts: str) -> Trainer:
    cfg = make_cfg(config, "", "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{test}',)")
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "SOLVER.IMS_PER_BATCH", "2", *opts])
    return Trainer(cfg)


def test_register_coco_instances(tmp_path, shapes_val, fresh_names):
    name = fresh_names("instances")
    register_coco_instances(name, {}, shapes_val.instances_json, shapes_val.image_root)
    assert not MetadataCatalog.get(name).get("thing_classes", None)  # Detectron2 fills it lazily
    trainer = build_trainer(tmp_path, INSTANCE_CONFIG, name, name)
    assert trainer.model.thing_ids == {0, 1, 2, 3}
    metadata = MetadataCatalog.get(name)
    assert metadata.thing_classes == SHAPE_NAMES
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 5: 3}
    # Loading later sets the same values (Metadata refuses different ones) and the same labels.
    records = DatasetCatalog.get(name)
    assert {a["category_id"] for r in records for a in r["annotations"]} == {0, 1, 2, 3}


def test_register_coco_panoptic(tmp_path, shapes_val, fresh_names):
    name = fresh_names("panoptic")
    with open(shapes_val.panoptic_json) as f:
        categories = json.load(f)["categories"]
    image_root, instances_json = jpg_layout(tmp_path, shapes_val)
    register_coco_panoptic(
        name,
        panoptic_metadata(categories),
        image_root,
        shapes_val.panoptic_root,
        shapes_val.panoptic_json,
        instances_json,
    )
    trainer = build_trainer(tmp_path, PANOPTIC_CONFIG, name, name)
    assert trainer.model.thing_ids == {0, 1, 2, 3}
    assert len(DatasetCatalog.get(name)) == 60


def test_register_coco_panoptic_separated(tmp_path, shapes_val, fresh_names):
    name = fresh_names("separated")
    stuff = {"stuff_classes": ["things", "sky", "grass", "wall"]}
    image_root, instances_json = jpg_layout(tmp_path, shapes_val)
    register_coco_panoptic_separated(
        name,
        stuff,
        image_root,
        shapes_val.panoptic_root,
        shapes_val.panoptic_json,
        shapes_val.sem_seg_root,
        instances_json,
    )
    # The "_separated" data set's instances come from the instances JSON: an instance model.
    trainer = build_trainer(tmp_path, INSTANCE_CONFIG, name + "_separated", name + "_separated")
    assert trainer.model.thing_ids == {0, 1, 2, 3}
    assert MetadataCatalog.get(name + "_separated").thing_classes == SHAPE_NAMES


def test_semantic_folder_with_stuff_classes(tmp_path, shapes_val, fresh_names):
    name = fresh_names("semantic")
    DatasetCatalog.register(
        name,
        lambda: load_sem_seg(
            shapes_val.sem_seg_root, shapes_val.image_root, gt_ext="png", image_ext="png"
        ),
    )
    classes = SHAPE_NAMES + ["sky", "grass", "wall"]
    MetadataCatalog.get(name).set(stuff_classes=classes, ignore_label=255, evaluator_type="sem_seg")
    semantic_only = (
        "MODEL.CLUSTER_DECODER.TEST.PANOPTIC_ON",
        "False",
        "MODEL.CLUSTER_DECODER.TEST.INSTANCE_ON",
        "False",
        "INPUT.DATASET_MAPPER_NAME",
        "mask_former_semantic",
    )
    trainer = build_trainer(tmp_path, PANOPTIC_CONFIG, name, name, *semantic_only)
    assert trainer.model.semantic_on and not trainer.model.instance_on
    # The class count is checked against stuff_classes, the semantic mapper's label space.
    with pytest.raises(ValueError, match=rf"NUM_CLASSES=6, but data set '{name}' has 7 classes"):
        build_trainer(
            tmp_path,
            PANOPTIC_CONFIG,
            name,
            name,
            *semantic_only,
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            "6",
        )


def test_num_classes_mismatch_names_both_numbers_and_the_data_set(
    tmp_path, shapes_val, fresh_names
):
    name = fresh_names("instances")
    register_coco_instances(name, {}, shapes_val.instances_json, shapes_val.image_root)
    with pytest.raises(
        ValueError,
        match=rf"MODEL.SEM_SEG_HEAD.NUM_CLASSES=7, but data set '{name}' has 4 classes "
        r"\(thing_classes",
    ):
        build_trainer(tmp_path, INSTANCE_CONFIG, name, name, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7")


def test_predictor_reads_the_class_names(tmp_path, shapes_val, fresh_names):
    name = fresh_names("instances")
    register_coco_instances(name, {}, shapes_val.instances_json, shapes_val.image_root)
    trainer = build_trainer(tmp_path, INSTANCE_CONFIG, name, name)
    weights = tmp_path / "untrained.pth"
    torch.save({"model": trainer.model.state_dict()}, weights)
    # A second, untouched registration: the predictor alone must fill its metadata.
    other = fresh_names("instances")
    register_coco_instances(other, {}, shapes_val.instances_json, shapes_val.image_root)
    cfg = make_cfg(INSTANCE_CONFIG, str(weights), "DATASETS.TRAIN", "()")
    cfg.merge_from_list(["DATASETS.TEST", f"('{other}',)"])
    predictor = ClusterFormerPredictor(cfg)
    assert predictor.metadata.thing_classes == SHAPE_NAMES
    assert predictor.model.thing_ids == {0, 1, 2, 3}


def test_bad_category_tables_name_the_file(tmp_path):
    path = tmp_path / "instances.json"
    for content, message in (
        ("{not json", "not valid JSON"),
        ('{"images": []}', "no 'categories' list"),
        ('{"categories": [{"id": "1", "name": "a"}]}', r"categories\[0\].*int 'id'"),
        ('{"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}', "repeats ids"),
    ):
        path.write_text(content)
        with pytest.raises(ValueError, match=message) as error:
            read_coco_categories(str(path))
        assert str(path) in str(error.value)
    path.write_text('{"categories": [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}]}')
    assert coco_json_class_metadata(str(path)) == {
        "thing_classes": ["a", "b"],
        "thing_dataset_id_to_contiguous_id": {2: 0, 7: 1},
    }


def test_missing_json_is_not_an_error_until_classes_are_needed(tmp_path, fresh_names):
    name = fresh_names("instances")
    register_coco_instances(name, {}, str(tmp_path / "absent.json"), str(tmp_path))
    assert not class_metadata(name).get("thing_classes", None)
    with pytest.raises(ValueError, match=r"need thing classes .*json_file"):
        build_trainer(tmp_path, INSTANCE_CONFIG, name, name)


def test_missing_registration_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--register '.*nothere\.py': no such file"):
        run_registration_files([str(tmp_path / "nothere.py")])
    script = tmp_path / "register.py"
    script.write_text("import os\nos.environ['REGISTERED_BY'] = __name__\n")
    run_registration_files([str(script)])
    assert os.environ.pop("REGISTERED_BY") == "__clusterformer_register__"
