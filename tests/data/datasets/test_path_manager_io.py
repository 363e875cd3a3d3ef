"""Images and annotation files are read through Detectron2's PathManager, so paths that a
registered iopath handler serves (remote storage) work in the data layer, the predictor's image
reader and the demo's inputs.

The handler below serves files from a dict in memory: nothing it serves exists on the local disk,
so a reader that bypassed the PathManager (``open``, ``os.path.isfile``, ``cv2.imread``) fails.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from typing import Any, Dict, List

import numpy as np
import pytest
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler
from PIL import Image

from clusterformer.data.dataset_mappers.mask_former import MaskFormerPanopticDatasetMapper
from clusterformer.data.dataset_mappers.targets import read_semantic_png
from clusterformer.data.datasets.dataset_paths import require_paths
from clusterformer.data.datasets.panoptic_json import check_first_record_files, load_panoptic_json
from clusterformer.data.image_io import UnreadableImageError, read_image_file, read_image_uint8

PREFIX = "clusterformer-test-memory://"
HEIGHT, WIDTH = 24, 32


class MemoryHandler(PathHandler):
    """``clusterformer-test-memory://<name>`` -> the bytes stored under ``<name>``."""

    def __init__(self) -> None:
        super().__init__()
        self.files: Dict[str, bytes] = {}
        self.opened: List[str] = []

    def _get_supported_prefixes(self) -> List[str]:
        return [PREFIX]

    def _name(self, path: str) -> str:
        return path[len(PREFIX) :]

    def _isfile(self, path: str, **kwargs: Any) -> bool:
        return self._name(path) in self.files

    def _exists(self, path: str, **kwargs: Any) -> bool:
        name = self._name(path).rstrip("/")
        return name in self.files or any(f.startswith(name + "/") for f in self.files)

    def _isdir(self, path: str, **kwargs: Any) -> bool:
        return not self._isfile(path) and self._exists(path)

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs: Any):
        name = self._name(path)
        if name not in self.files:
            raise FileNotFoundError(f"{path!r} is not in memory")
        self.opened.append(name)
        data = self.files[name]
        return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())


@pytest.fixture(scope="module")
def memory() -> MemoryHandler:
    handler = MemoryHandler()
    PathManager.register_handler(handler, allow_override=True)
    return handler


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def dataset(memory) -> Dict[str, Any]:
    """A one-image COCO-format panoptic data set (image, panoptic PNG, semantic PNG, JSON) in
    memory: a thing (category 1, segment 5) on the left half, stuff (category 2, segment 9) on
    the right."""
    memory.files.clear()
    memory.opened.clear()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    segment_ids = np.full((HEIGHT, WIDTH), 9, dtype=np.uint8)
    segment_ids[:, : WIDTH // 2] = 5
    panoptic = np.stack([segment_ids, np.zeros_like(segment_ids), np.zeros_like(segment_ids)], -1)
    semantic = np.where(segment_ids == 5, 0, 1).astype(np.uint8)
    content = {
        "images": [{"id": 7, "file_name": "a.png", "height": HEIGHT, "width": WIDTH}],
        "annotations": [
            {
                "image_id": 7,
                "file_name": "a.png",
                "segments_info": [
                    {"id": 5, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1]},
                    {"id": 9, "category_id": 2, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1]},
                ],
            }
        ],
        "categories": [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 0}],
    }
    memory.files.update(
        {
            "ds/images/a.png": png_bytes(image),
            "ds/panoptic/a.png": png_bytes(panoptic),
            "ds/semantic/a.png": png_bytes(semantic),
            "ds/panoptic.json": json.dumps(content).encode(),
        }
    )
    return {"image": image, "semantic": semantic, "root": PREFIX + "ds"}


def load(root: str) -> List[Dict[str, Any]]:
    return load_panoptic_json(
        f"{root}/panoptic.json",
        f"{root}/images",
        f"{root}/panoptic",
        f"{root}/semantic",
        {1: 0},
        {1: 0, 2: 1},
    )


def test_panoptic_data_set_is_loaded_and_mapped_through_the_path_manager(dataset, memory):
    root = dataset["root"]
    require_paths("memory_panoptic", {"panoptic JSON": f"{root}/panoptic.json"})
    (record,) = load(root)
    assert record["file_name"] == f"{root}/images/a.png"
    assert record["pan_seg_file_name"] == f"{root}/panoptic/a.png"
    check_first_record_files("memory_panoptic", f"{root}/panoptic.json", [record])

    mapper = MaskFormerPanopticDatasetMapper(
        True, augmentations=[], image_format="RGB", num_classes=2
    )
    output = mapper(record)
    np.testing.assert_array_equal(output["image"].permute(1, 2, 0).numpy(), dataset["image"])
    instances = output["instances"]
    assert sorted(instances.gt_classes.tolist()) == [0, 1]
    masks = dict(zip(instances.gt_classes.tolist(), instances.gt_masks.tensor.numpy()))
    assert masks[0][:, : WIDTH // 2].all() and not masks[0][:, WIDTH // 2 :].any()
    assert {"ds/panoptic.json", "ds/images/a.png", "ds/panoptic/a.png"} <= set(memory.opened)

    labels = read_semantic_png(record["sem_seg_file_name"], (HEIGHT, WIDTH), record["file_name"])
    np.testing.assert_array_equal(labels, dataset["semantic"])


def test_predictor_and_demo_image_reader_use_the_path_manager(dataset):
    path = dataset["root"] + "/images/a.png"
    np.testing.assert_array_equal(read_image_uint8(path, format="RGB"), dataset["image"])
    np.testing.assert_array_equal(read_image_file(path, "BGR"), dataset["image"][:, :, ::-1])


def test_missing_remote_files_are_named(dataset):
    root = dataset["root"]
    missing = f"{root}/images/missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image_file(missing, "RGB")
    with pytest.raises(UnreadableImageError, match="missing.png"):
        read_image_uint8(missing)
    with pytest.raises(FileNotFoundError, match="the panoptic JSON .*nothing.json"):
        require_paths("memory_panoptic", {"panoptic JSON": f"{root}/nothing.json"})
    (record,) = load(root)
    record["pan_seg_file_name"] = f"{root}/panoptic/gone.png"
    with pytest.raises(FileNotFoundError, match="pan_seg_file_name .*gone.png"):
        check_first_record_files("memory_panoptic", f"{root}/panoptic.json", [record])


def test_demo_accepts_inputs_the_path_manager_serves(dataset):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "demo", "demo.py")
    spec = importlib.util.spec_from_file_location("clusterformer_demo_path_manager", path)
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo  # dataclasses look their module up while it executes
    spec.loader.exec_module(demo)
    image = dataset["root"] + "/images/a.png"
    missing = dataset["root"] + "/images/missing.png"
    files, failures = demo.expand_inputs([image, missing])
    assert files == [image]
    assert failures == [(missing, "no such file, folder or matching pattern")]
