"""The shapes generator: determinism, mutual consistency of its formats, caching, concurrency.

No detectron2 here: tests/data/datasets/test_shapes_registration.py runs the Detectron2 evaluators on it.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from clusterformer.data.datasets import shapes
from clusterformer.data.datasets.mask_encoding import mask_bbox, rgb2id
from clusterformer.data.datasets.shapes import (
    CATEGORIES,
    SPLITS,
    THING_CATEGORIES,
    ShapesConfig,
    ensure_shapes,
    generate_shapes,
    is_up_to_date,
    read_manifest,
    split_paths,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
# Small, but with every case: RLE instances, multi-polygon instances, void pixels (the high
# min_visible_area drops heavily occluded things).
SMALL = ShapesConfig(
    num_train_images=4,
    num_val_images=16,
    min_visible_area=150,
    classification_train_per_class=2,
    classification_val_per_class=3,
)
TINY = dataclasses.replace(
    SMALL, num_train_images=2, num_val_images=2, classification_train_per_class=1
)


def _tree(root):
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def _load_png(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("small") / "shapes")
    generate_shapes(root, SMALL, workers=1)
    return root


def test_layout_counts_and_image_formats(small_root):
    manifest = read_manifest(small_root)
    assert manifest["params"] == dataclasses.asdict(SMALL)
    assert manifest["version"] == shapes.GENERATOR_VERSION
    for split in SPLITS:
        paths = split_paths(small_root, split)
        with open(paths.panoptic_json) as f:
            panoptic = json.load(f)
        with open(paths.instances_json) as f:
            instances = json.load(f)
        assert (
            len(panoptic["images"])
            == SMALL.num_images(split)
            == manifest["counts"][split]["images"]
        )
        assert instances["images"] == panoptic["images"]
        assert len(instances["annotations"]) == manifest["counts"][split]["instances"]
        assert panoptic["categories"] == CATEGORIES
        assert [c["id"] for c in instances["categories"]] == [1, 2, 3, 5]
        for image in panoptic["images"]:
            picture = Image.open(os.path.join(paths.image_root, image["file_name"]))
            assert picture.format == "PNG" and picture.mode == "RGB"
            assert picture.size == (image["width"], image["height"]) == (160, 128)
            assert Image.open(os.path.join(paths.panoptic_root, image["file_name"])).mode == "RGB"
            assert Image.open(os.path.join(paths.sem_seg_root, image["file_name"])).mode == "L"
        for category in THING_CATEGORIES:
            folder = os.path.join(paths.classification_root, category["name"])
            files = sorted(os.listdir(folder))
            assert len(files) == SMALL.classification_per_class(split)
            assert Image.open(os.path.join(folder, files[0])).size == (64, 64)
    train_ids = {
        i["id"] for i in COCO(split_paths(small_root, "train").instances_json).dataset["images"]
    }
    val_ids = {
        i["id"] for i in COCO(split_paths(small_root, "val").instances_json).dataset["images"]
    }
    assert not train_ids & val_ids


def test_same_seed_gives_identical_bytes_and_other_seed_differs(small_root, tmp_path):
    generate_shapes(str(tmp_path / "again"), SMALL)
    first, again = _tree(small_root), _tree(str(tmp_path / "again"))
    assert sorted(first) == sorted(again)
    assert all(first[name] == again[name] for name in first)

    generate_shapes(str(tmp_path / "other"), dataclasses.replace(SMALL, seed=1))
    other = _tree(str(tmp_path / "other"))
    images = [name for name in first if name.startswith("val" + os.sep)]
    assert images and all(first[name] != other[name] for name in images)
    assert (
        first[os.path.join("annotations", "panoptic_val.json")]
        != other[os.path.join("annotations", "panoptic_val.json")]
    )


def test_parallel_generation_writes_the_same_bytes(small_root, tmp_path):
    generate_shapes(str(tmp_path / "parallel"), SMALL, workers=3)
    assert _tree(str(tmp_path / "parallel")) == _tree(small_root)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        generate_shapes(str(tmp_path / "none"), SMALL, workers=0)


def test_more_training_scenes_keep_the_val_split_and_the_first_training_scenes(
    small_root, tmp_path
):
    """The larger training set (shapes3k) is evaluated on the default set's val split: adding
    training scenes must not change a val byte or an earlier training scene."""
    generate_shapes(str(tmp_path / "more"), dataclasses.replace(SMALL, num_train_images=7))
    first, more = _tree(small_root), _tree(str(tmp_path / "more"))
    val = [n for n in first if n.split(os.sep)[0] in ("val", "panoptic_val", "panoptic_semseg_val")]
    val += [os.path.join("annotations", f"{kind}_val.json") for kind in ("instances", "panoptic")]
    assert len(val) > 2 and all(first[n] == more[n] for n in val)
    train = [n for n in first if n.split(os.sep)[0] in ("train", "panoptic_train")]
    assert len(train) == 2 * SMALL.num_train_images and all(first[n] == more[n] for n in train)
    assert len([n for n in more if n.startswith("train" + os.sep)]) == 7


def test_denser_training_scenes_keep_the_val_split(small_root, tmp_path):
    """train_min_things / train_max_things change the training scenes only (shapes_dense)."""
    dense = dataclasses.replace(SMALL, train_min_things=6, train_max_things=8)
    assert dense.things_range("train") == (6, 8) and dense.things_range("val") == (1, 5)
    generate_shapes(str(tmp_path / "dense"), dense)
    first, other = _tree(small_root), _tree(str(tmp_path / "dense"))
    val = [n for n in first if n.split(os.sep)[0] in ("val", "panoptic_val", "panoptic_semseg_val")]
    val += [os.path.join("annotations", f"{kind}_val.json") for kind in ("instances", "panoptic")]
    assert len(val) > 2 and all(first[n] == other[n] for n in val)
    with open(split_paths(str(tmp_path / "dense"), "train").panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    # Six drawn things or more per scene; a few may be hidden by later ones (not annotated).
    things = [sum(s["category_id"] < 10 for s in a["segments_info"]) for a in annotations]
    assert min(things) >= 3 and max(things) <= 8 and sum(things) / len(things) >= 5


def _panoptic_annotations(root, split):
    paths = split_paths(root, split)
    with open(paths.panoptic_json) as f:
        panoptic = json.load(f)
    for annotation in panoptic["annotations"]:
        ids = rgb2id(_load_png(os.path.join(paths.panoptic_root, annotation["file_name"])))
        yield paths, annotation, ids


@pytest.mark.parametrize("split", SPLITS)
def test_panoptic_png_matches_segments_info(small_root, split):
    category_ids = {c["id"]: c for c in CATEGORIES}
    for _, annotation, ids in _panoptic_annotations(small_root, split):
        segments = annotation["segments_info"]
        assert sorted(set(np.unique(ids).tolist()) - {0}) == sorted(s["id"] for s in segments)
        stuff_categories = [
            s["category_id"] for s in segments if not category_ids[s["category_id"]]["isthing"]
        ]
        assert len(stuff_categories) == len(set(stuff_categories))  # one segment per stuff class
        for segment in segments:
            mask = ids == segment["id"]
            assert segment["area"] == int(mask.sum()) > 0
            assert segment["bbox"] == mask_bbox(mask)
            assert segment["iscrowd"] == 0
            assert segment["category_id"] in category_ids


@pytest.mark.parametrize("split", SPLITS)
def test_semantic_png_is_the_panoptic_annotation_in_contiguous_ids(small_root, split):
    contiguous = {c["id"]: i for i, c in enumerate(CATEGORIES)}
    void_images = 0
    for paths, annotation, ids in _panoptic_annotations(small_root, split):
        semantic = _load_png(os.path.join(paths.sem_seg_root, annotation["file_name"]))
        expected = np.full(ids.shape, 255, dtype=np.uint8)
        for segment in annotation["segments_info"]:
            expected[ids == segment["id"]] = contiguous[segment["category_id"]]
        assert semantic.dtype == np.uint8
        assert np.array_equal(semantic, expected)
        void_images += bool((ids == 0).any())
    if split == "val":
        assert void_images > 0, "the test config should produce void pixels"


def _has_holes(mask):
    background = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    return cv2.connectedComponents(background, connectivity=8)[0] - 1 > 1


@pytest.mark.parametrize("split", SPLITS)
def test_instances_decode_to_the_panoptic_thing_segments(small_root, split):
    paths = split_paths(small_root, split)
    coco = COCO(paths.instances_json)
    thing_ids = {c["id"] for c in THING_CATEGORIES}
    formats = {"polygons": 0, "several polygons": 0, "rle": 0}
    for _, annotation, ids in _panoptic_annotations(small_root, split):
        things = [s for s in annotation["segments_info"] if s["category_id"] in thing_ids]
        instances = coco.loadAnns(coco.getAnnIds(imgIds=[annotation["image_id"]]))
        assert len(instances) == len(things)
        unmatched = list(things)
        for instance in instances:
            mask = coco.annToMask(instance).astype(bool)
            matches = [s for s in unmatched if np.array_equal(ids == s["id"], mask)]
            assert len(matches) == 1, f"instance {instance['id']} matches no panoptic segment"
            segment = matches[0]
            unmatched.remove(segment)
            assert instance["category_id"] == segment["category_id"]
            assert instance["bbox"] == segment["bbox"] == mask_bbox(mask)
            assert instance["area"] == segment["area"] == int(mask.sum())
            assert instance["iscrowd"] == 0
            segmentation = instance["segmentation"]
            if isinstance(segmentation, dict):
                formats["rle"] += 1
                assert isinstance(segmentation["counts"], str)
                assert _has_holes(mask), "RLE is only for masks that polygons cannot express"
            else:
                formats["polygons"] += 1
                formats["several polygons"] += len(segmentation) > 1
                assert not _has_holes(mask)
    if split == "val":
        assert all(formats.values()), formats


def test_classification_images_differ_per_class_and_index(small_root):
    root = split_paths(small_root, "val").classification_root
    images = [
        _load_png(os.path.join(root, c["name"], name))
        for c in THING_CATEGORIES
        for name in sorted(os.listdir(os.path.join(root, c["name"])))
    ]
    assert len(images) == 12
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1 :])


def test_config_validation():
    with pytest.raises(ValueError, match="max_things"):
        ShapesConfig(min_things=3, max_things=2)
    with pytest.raises(ValueError, match="train scenes need min things <= max things, got 4 and 3"):
        ShapesConfig(train_min_things=4, train_max_things=3)
    with pytest.raises(ValueError, match="image_height"):
        ShapesConfig(image_height=0)
    with pytest.raises(ValueError, match="split"):
        split_paths("x", "test")


def test_default_root_follows_detectron2_datasets(monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert shapes.default_root() == os.path.join("datasets", "shapes")
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/d2")
    assert shapes.default_root() == "/data/d2/shapes"


# ---- caching --------------------------------------------------------------------------------


def test_cache_is_reused_and_regenerated_when_parameters_or_version_change(tmp_path, monkeypatch):
    root = str(tmp_path / "shapes")
    assert ensure_shapes(root, TINY) == root
    assert is_up_to_date(root, TINY)
    manifest_path = os.path.join(root, "manifest.json")
    first_manifest_inode = os.stat(manifest_path).st_ino

    def must_not_run(*args, **kwargs):
        raise AssertionError("generated again although the data set was up to date")

    with monkeypatch.context() as patch:
        patch.setattr(shapes, "generate_shapes", must_not_run)
        ensure_shapes(root, TINY)
    assert os.stat(manifest_path).st_ino == first_manifest_inode

    changed = dataclasses.replace(TINY, num_val_images=3)
    assert not is_up_to_date(root, changed)
    ensure_shapes(root, changed)
    assert read_manifest(root)["params"]["num_val_images"] == 3
    assert len(os.listdir(split_paths(root, "val").image_root)) == 3

    monkeypatch.setattr(shapes, "GENERATOR_VERSION", shapes.GENERATOR_VERSION + 1)
    assert not is_up_to_date(root, changed)
    ensure_shapes(root, changed)
    assert read_manifest(root)["version"] == shapes.GENERATOR_VERSION
    # Nothing is left next to the data set but its lock file.
    assert sorted(os.listdir(tmp_path)) == [".shapes.lock", "shapes"]


def test_force_regenerates_and_foreign_folders_are_not_replaced(tmp_path):
    root = tmp_path / "shapes"
    root.mkdir()
    (root / "precious.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a generated shapes data set"):
        ensure_shapes(str(root), TINY)
    assert (root / "precious.txt").exists()
    ensure_shapes(str(root), TINY, force=True)
    assert is_up_to_date(str(root), TINY) and not (root / "precious.txt").exists()


def test_interrupted_generation_leaves_no_data_set(tmp_path, monkeypatch):
    root = str(tmp_path / "shapes")
    real_generate_split = shapes._generate_split

    def crash_in_val(root_, config, split, *args):
        if split == "val":
            raise KeyboardInterrupt("killed while writing")
        return real_generate_split(root_, config, split, *args)

    monkeypatch.setattr(shapes, "_generate_split", crash_in_val)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes(root, TINY)
    assert not os.path.exists(root)
    assert os.listdir(tmp_path) == [".shapes.lock"]
    # A temporary folder left by a killed process is removed by the next generation.
    os.makedirs(os.path.join(tmp_path, ".shapes.tmp-12345-dead"))
    monkeypatch.setattr(shapes, "_generate_split", real_generate_split)
    ensure_shapes(root, TINY)
    assert sorted(os.listdir(tmp_path)) == [".shapes.lock", "shapes"]


_WORKER = textwrap.dedent(
    """
    import logging, os, sys, time
    from clusterformer.data.datasets.shapes import ShapesConfig, ensure_shapes
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root, go = sys.argv[1], sys.argv[2]
    open(root + ".ready-" + str(os.getpid()), "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    ensure_shapes(root, ShapesConfig(**{config}))
    """
)


def test_two_processes_asking_at_once_get_one_valid_data_set(tmp_path):
    config = dataclasses.replace(TINY, num_val_images=12)
    root, go = str(tmp_path / "shapes"), str(tmp_path / "go")
    script = _WORKER.format(config=repr(dataclasses.asdict(config)))
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, root, go],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.time() + 120
    while len([n for n in os.listdir(tmp_path) if ".ready-" in n]) < 2:
        assert time.time() < deadline and all(w.poll() is None for w in workers), [
            w.communicate() for w in workers
        ]
        time.sleep(0.01)
    open(go, "w").close()  # release both at the same moment
    logs = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        logs.append(err)
    assert sum(log.count("Generating the shapes data set") for log in logs) == 1, logs
    generate_shapes(str(tmp_path / "reference"), config)
    assert _tree(root) == _tree(str(tmp_path / "reference"))


def test_command_line(tmp_path):
    root = str(tmp_path / "cli")
    command = [sys.executable, "-m", "clusterformer.data.datasets.shapes", "--root", root]
    command += [
        "--num-train-images",
        "1",
        "--num-val-images",
        "2",
        "--classification-train-per-class",
        "1",
    ]
    command += ["--classification-val-per-class", "1", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["val"]["images"] == 2
    assert "Generating" in result.stderr and "RuntimeWarning" not in result.stderr
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Generating" not in again.stderr
