#!/usr/bin/env python3
"""ADE20K semantic + instance annotations -> COCO panoptic format, for ``ade20k_panoptic_{train,val}``.

Inputs under ``$DETECTRON2_DATASETS/ADEChallengeData2016``:

* ``images/{training,validation}/*.jpg``,
* ``annotations/{training,validation}/*.png``: the benchmark's labels (0 = other, 1..150),
* ``annotations_instance/{training,validation}/*.png``: the instance benchmark's annotations
  (``annotations_instance.tar`` from sceneparsing.csail.mit.edu): red = instance category 1..100
  (0 = none), green = instance index within the image (0 = none).

Outputs: ``ade20k_panoptic_{train,val}/*.png`` (segment id = R + 256 G + 256^2 B) and
``ade20k_panoptic_{train,val}.json`` with category ids 0..149 (label - 1) and their thing / stuff
split (``clusterformer.data.datasets.ade20k_categories``).

The conversion follows the one Mask2Former documents: a stuff segment per stuff class present in
the semantic labels; then one thing segment per instance, pasted over stuff, whose class is the
semantic class of its instance category. Pixels of a thing class outside every instance are void.
Unlike that script, areas and boxes are measured on the final map (after the things are pasted)
and segments left with no pixel are dropped, so the JSON agrees with the PNG.

Usage: ``python datasets/prepare_ade20k_pan_seg.py [--workers N]``
(a progress bar per split on stderr: files done, rate and the time left).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

try:
    from clusterformer.data.datasets.ade20k_categories import ADE20K_THING_IDS, ade20k_categories
    from clusterformer.utils.progress import map_with_progress
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from clusterformer.data.datasets.ade20k_categories import ADE20K_THING_IDS, ade20k_categories
    from clusterformer.utils.progress import map_with_progress

SPLITS = (("train", "training"), ("val", "validation"))


class SegmentIdAllocator:
    """Unique segment ids for one image, coloured like panopticapi's ``IdGenerator``: a segment
    gets its category's palette colour, or a random jitter of it when that colour is taken.

    Unlike ``IdGenerator``, stuff colours are reserved too (a jittered thing colour could
    otherwise equal a stuff colour and merge the two segments), black (void) is never used, and
    the jitter is seeded from the image name so conversions are reproducible.
    """

    def __init__(self, categories: Dict[int, Dict], seed_text: str):
        self.categories = categories
        self.taken = {(0, 0, 0)}
        self.rng = np.random.default_rng(zlib.crc32(seed_text.encode()))

    def allocate(self, category_id: int) -> int:
        base = np.array(self.categories[category_id]["color"], dtype=np.int64)
        color = tuple(int(v) for v in base)
        while color in self.taken:
            jittered = np.clip(base + self.rng.integers(-30, 31, size=3), 0, 255)
            color = tuple(int(v) for v in jittered)
        self.taken.add(color)
        return color[0] + 256 * color[1] + 256 * 256 * color[2]


def read_png(file_name: Path, role: str) -> np.ndarray:
    if not file_name.is_file():
        raise FileNotFoundError(f"The {role} {str(file_name)!r} does not exist")
    with Image.open(file_name) as png:
        return np.asarray(png)


def segment_record(segment_id: int, category_id: int, mask: np.ndarray) -> Dict:
    """COCO panoptic ``segments_info`` entry, with the XYWH box and area of ``mask``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    bbox = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
    return {
        "id": int(segment_id),
        "category_id": int(category_id),
        "area": int(mask.sum()),
        "bbox": bbox,
        "iscrowd": 0,
    }


def convert_image(
    image_file: str, semantic_file: str, instance_file: str, output_png: str
) -> Tuple[Dict, Dict]:
    """Write the panoptic PNG of one image; return its JSON ``image`` and ``annotation`` entries."""
    categories = {c["id"]: c for c in ade20k_categories()}
    thing_of_instance_category = {k + 1: c for k, c in enumerate(ADE20K_THING_IDS)}
    with Image.open(image_file) as image:
        width, height = image.size
    semantic = read_png(Path(semantic_file), "semantic annotation")
    instance = read_png(Path(instance_file), "instance annotation")
    for name, array, expected_ndim in ((semantic_file, semantic, 2), (instance_file, instance, 3)):
        if array.shape[:2] != (height, width) or array.ndim != expected_ndim:
            raise ValueError(
                f"Annotation {name!r} has shape {array.shape}, but its image {image_file!r} is "
                f"{(height, width)} (H, W); expected {'(H, W)' if expected_ndim == 2 else '(H, W, 3)'}"
            )
    if semantic.max(initial=0) > len(categories):
        raise ValueError(f"{semantic_file!r} has label {semantic.max()} > {len(categories)}")

    allocator = SegmentIdAllocator(categories, Path(image_file).stem)
    segment_ids = np.zeros((height, width), dtype=np.int64)
    segment_categories: Dict[int, int] = {}
    class_ids = semantic.astype(np.int64) - 1  # -1 = "other"
    for class_id in np.unique(class_ids):
        if class_id < 0 or categories[int(class_id)]["isthing"]:
            continue
        segment_id = allocator.allocate(int(class_id))
        segment_ids[class_ids == class_id] = segment_id
        segment_categories[segment_id] = int(class_id)

    instance_categories = instance[..., 0]
    instance_indices = instance[..., 1]
    for index in np.unique(instance_indices):
        if index == 0:
            continue
        mask = instance_indices == index
        found = np.unique(instance_categories[mask])
        if len(found) != 1 or int(found[0]) not in thing_of_instance_category:
            raise ValueError(
                f"Instance {index} of {instance_file!r} has instance categories {found.tolist()}; "
                "expected exactly one in 1..100"
            )
        class_id = thing_of_instance_category[int(found[0])]
        segment_id = allocator.allocate(class_id)
        segment_ids[mask] = segment_id
        segment_categories[segment_id] = class_id

    segments_info = []
    for segment_id, class_id in segment_categories.items():
        mask = segment_ids == segment_id
        if mask.any():
            segments_info.append(segment_record(segment_id, class_id, mask))
    rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], axis=-1)
    Image.fromarray(rgb.astype(np.uint8)).save(output_png)

    image_id = Path(image_file).stem
    image_entry = {
        "id": image_id,
        "file_name": Path(image_file).name,
        "width": width,
        "height": height,
    }
    annotation_entry = {
        "image_id": image_id,
        "file_name": Path(output_png).name,
        "segments_info": segments_info,
    }
    return image_entry, annotation_entry


def convert_split(ade_root: Path, name: str, directory: str, workers: int) -> int:
    """Convert one split; returns the number of images."""
    image_dir = ade_root / "images" / directory
    semantic_dir = ade_root / "annotations" / directory
    instance_dir = ade_root / "annotations_instance" / directory
    for description, path, source in (
        ("image folder", image_dir, "ADEChallengeData2016.zip"),
        ("semantic annotation folder", semantic_dir, "ADEChallengeData2016.zip"),
        ("instance annotation folder", instance_dir, "annotations_instance.tar"),
    ):
        if not path.is_dir():
            raise FileNotFoundError(
                f"The ADE20K {description} {str(path)!r} does not exist; it comes with {source} "
                "(see datasets/README.md)"
            )
    output_dir = ade_root / f"ade20k_panoptic_{name}"
    output_dir.mkdir(parents=True, exist_ok=True)
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"No .jpg images in {str(image_dir)!r}")
    tasks = [
        (
            str(f),
            str(semantic_dir / f"{f.stem}.png"),
            str(instance_dir / f"{f.stem}.png"),
            str(output_dir / f"{f.stem}.png"),
        )
        for f in images
    ]
    results: List[Tuple[Dict, Dict]] = map_with_progress(convert_image, tasks, workers, directory)
    content = {
        "images": [image for image, _ in results],
        "annotations": [annotation for _, annotation in results],
        "categories": ade20k_categories(),
    }
    with open(ade_root / f"ade20k_panoptic_{name}.json", "w") as f:
        json.dump(content, f)
    return len(tasks)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args(argv)

    root = Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
    ade_root = root / "ADEChallengeData2016"
    for name, directory in SPLITS:
        start = time.time()
        count = convert_split(ade_root, name, directory, args.workers)
        print(f"{directory}: converted {count} images in {time.time() - start:.1f}s")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
