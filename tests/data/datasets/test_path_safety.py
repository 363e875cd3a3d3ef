"""Data set descriptions cannot make the loaders read outside the data set's folders."""

import json
import os

import pytest

from clusterformer.data.datasets.class_folder import load_class_folder
from clusterformer.data.datasets.panoptic_json import load_panoptic_json
from clusterformer.data.datasets.path_safety import (
    UnsafePathError,
    check_records_inside,
    is_inside,
    resolve_inside,
)


def test_resolve_inside_accepts_names_below_the_root(tmp_path):
    root = str(tmp_path / "images")
    assert resolve_inside(root, "a.png", source="x.json", entry="e") == os.path.join(root, "a.png")
    assert resolve_inside(root, "sub/../b.png", source="x.json", entry="e").endswith("b.png")
    inside = os.path.join(root, "sub", "c.png")
    assert resolve_inside(root, inside, source="x.json", entry="e") == inside


@pytest.mark.parametrize(
    "name", ["../secret.png", "sub/../../secret.png", "/etc/passwd", "", ".", None, 7]
)
def test_resolve_inside_rejects_names_leaving_the_root(tmp_path, name):
    with pytest.raises(UnsafePathError, match=r"x\.json.*image id 3"):
        resolve_inside(str(tmp_path / "images"), name, source="x.json", entry="image id 3")


def test_prefix_of_the_root_is_not_inside(tmp_path):
    # "/data/images2" starts with "/data/images" but is another folder.
    assert not is_inside(str(tmp_path / "images2" / "a.png"), str(tmp_path / "images"))
    assert is_inside(str(tmp_path / "images" / "a.png"), str(tmp_path / "images"))


def write_panoptic_json(path, image_name, annotation_name):
    content = {
        "images": [{"id": 1, "file_name": image_name, "height": 4, "width": 4}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": annotation_name,
                "segments_info": [{"id": 5, "category_id": 1, "iscrowd": 0}],
            }
        ],
        "categories": [{"id": 1, "name": "thing", "isthing": 1}],
    }
    path.write_text(json.dumps(content))


@pytest.mark.parametrize(
    "image_name, annotation_name, bad",
    [
        ("../../outside.jpg", "1.png", "outside.jpg"),
        ("/etc/hostname", "1.png", "/etc/hostname"),
        ("1.jpg", "../pan_elsewhere/1.png", "pan_elsewhere"),
    ],
)
def test_panoptic_json_rejects_file_names_outside_the_folders(
    tmp_path, image_name, annotation_name, bad
):
    json_file = tmp_path / "panoptic.json"
    write_panoptic_json(json_file, image_name, annotation_name)
    with pytest.raises(UnsafePathError, match=rf"panoptic\.json.*image id 1.*{bad}"):
        load_panoptic_json(
            str(json_file),
            str(tmp_path / "images"),
            str(tmp_path / "pan"),
            str(tmp_path / "sem"),
            {1: 0},
            {1: 0},
        )


def test_panoptic_json_semantic_file_mirrors_the_panoptic_name(tmp_path):
    json_file = tmp_path / "panoptic.json"
    write_panoptic_json(json_file, "sub/1.jpg", str(tmp_path / "pan" / "sub" / "1.png"))
    (record,) = load_panoptic_json(
        str(json_file),
        str(tmp_path / "images"),
        str(tmp_path / "pan"),
        str(tmp_path / "sem"),
        {1: 0},
        {1: 0},
    )
    assert record["file_name"] == str(tmp_path / "images" / "sub" / "1.jpg")
    assert record["pan_seg_file_name"] == str(tmp_path / "pan" / "sub" / "1.png")
    # An absolute panoptic name inside its folder maps to the same name in the semantic folder.
    assert record["sem_seg_file_name"] == str(tmp_path / "sem" / "sub" / "1.png")


@pytest.mark.parametrize("class_name", ["..", "../other", "a/b", "", "/tmp"])
def test_class_folder_rejects_class_names_that_are_paths(tmp_path, class_name):
    (tmp_path / "cls" / "ok").mkdir(parents=True)
    (tmp_path / "cls" / "ok" / "x.png").write_bytes(b"")
    with pytest.raises(UnsafePathError, match="class name"):
        load_class_folder(str(tmp_path / "cls"), ["ok", class_name])


def test_check_records_inside_names_the_record(tmp_path):
    root = str(tmp_path / "images")
    records = [
        {"file_name": os.path.join(root, "a.jpg"), "image_id": 1},
        {"file_name": os.path.join(root, "..", "b.jpg"), "image_id": 2},
    ]
    with pytest.raises(UnsafePathError, match=r"instances\.json.*record #1 \(image id 2\)"):
        check_records_inside(records, {"file_name": root}, source="instances.json")
    check_records_inside(records[:1], {"file_name": root}, source="instances.json")
