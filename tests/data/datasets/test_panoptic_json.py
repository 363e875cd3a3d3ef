"""The one loader of COCO-format panoptic annotations (COCO, ADE20K and shapes use it)."""

import json
import os

import pytest

from clusterformer.data.datasets.panoptic_json import check_first_record_files, load_panoptic_json

THINGS = {1: 0}
STUFF = {1: 0, 7: 1}


def write_json(folder, annotations, images=None):
    content = {
        "images": images
        if images is not None
        else [{"id": 5, "file_name": "a.jpg", "height": 3, "width": 4}],
        "annotations": annotations,
        "categories": [],
    }
    path = os.path.join(folder, "panoptic.json")
    with open(path, "w") as f:
        json.dump(content, f)
    return path


def annotation(category_id=7, image_id=5):
    return {
        "image_id": image_id,
        "file_name": "a.png",
        "segments_info": [
            {"id": 11, "category_id": 1, "iscrowd": 0, "area": 2, "bbox": [0, 0, 1, 2]},
            {"id": 12, "category_id": category_id, "iscrowd": 1, "area": 3, "bbox": [1, 0, 3, 1]},
        ],
    }


def test_records_with_and_without_semantic_folder(tmp_path):
    path = write_json(str(tmp_path), [annotation()])
    (record,) = load_panoptic_json(path, "img", "pan", "sem", THINGS, STUFF)
    assert record == {
        "file_name": os.path.join("img", "a.jpg"),
        "image_id": 5,
        "height": 3,
        "width": 4,
        "pan_seg_file_name": os.path.join("pan", "a.png"),
        "sem_seg_file_name": os.path.join("sem", "a.png"),
        "segments_info": [
            {**annotation()["segments_info"][0], "category_id": 0, "isthing": True},
            {**annotation()["segments_info"][1], "category_id": 1, "isthing": False},
        ],
    }
    (without,) = load_panoptic_json(path, "img", "pan", None, THINGS, STUFF)
    assert "sem_seg_file_name" not in without
    assert without["pan_seg_file_name"] == record["pan_seg_file_name"]


def test_unknown_category_names_json_annotation_image_segment_and_id(tmp_path):
    path = write_json(str(tmp_path), [annotation(category_id=42)])
    with pytest.raises(ValueError) as error:
        load_panoptic_json(path, "img", "pan", "sem", THINGS, STUFF)
    message = str(error.value)
    for part in ("panoptic.json", "segment 12", "'a.png'", "image id 5", "category id 42"):
        assert part in message, (part, message)


def test_annotation_without_image_entry_names_json_and_image_id(tmp_path):
    path = write_json(str(tmp_path), [annotation(image_id=6)])
    with pytest.raises(ValueError, match=r"panoptic\.json.*'a\.png'.*image id 6.*'images'"):
        load_panoptic_json(path, "img", "pan", "sem", THINGS, STUFF)


def test_no_annotations_names_json(tmp_path):
    path = write_json(str(tmp_path), [])
    with pytest.raises(ValueError, match=r"panoptic\.json.*no annotations"):
        load_panoptic_json(path, "img", "pan", "sem", THINGS, STUFF)


def test_first_record_check_names_data_set_json_key_and_file(tmp_path):
    for name in ("a.jpg", "a.png"):
        (tmp_path / name).write_bytes(b"")
    path = write_json(str(tmp_path), [annotation()])
    folder = str(tmp_path)
    records = load_panoptic_json(path, folder, folder, None, THINGS, STUFF)
    check_first_record_files("my_set", path, records)  # all present: no error

    records = load_panoptic_json(path, folder, folder, os.path.join(folder, "sem"), THINGS, STUFF)
    with pytest.raises(FileNotFoundError) as error:
        check_first_record_files("my_set", path, records)
    message = str(error.value)
    for part in ("'my_set'", "sem_seg_file_name", os.path.join(folder, "sem", "a.png"), path):
        assert part in message, (part, message)
