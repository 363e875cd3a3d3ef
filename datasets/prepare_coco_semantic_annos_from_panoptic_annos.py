#!/usr/bin/env python3
"""COCO panoptic PNGs -> semantic label PNGs, for ``coco_2017_{train,val}_panoptic_with_sem_seg``.

Reads ``$DETECTRON2_DATASETS/coco/annotations/panoptic_{split}.json`` and
``coco/panoptic_{split}/*.png`` and writes ``coco/panoptic_semseg_{split}/*.png``: every pixel of a
segment (crowd segments included) gets the segment category's contiguous id (its index in
Detectron2's ``COCO_CATEGORIES``, 0..132), unlabelled pixels get 255. The semantic evaluator
reads these files.

Usage: ``python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py [--workers N]``
(a progress bar per split on stderr: files done, rate and the time left).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

try:
    from clusterformer.utils.progress import map_with_progress
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from clusterformer.utils.progress import map_with_progress

IGNORE_LABEL = 255


def coco_category_id_map() -> Dict[int, int]:
    """COCO category id -> contiguous id (order of ``COCO_CATEGORIES``: 80 things, 53 stuff)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return {category["id"]: index for index, category in enumerate(COCO_CATEGORIES)}


def panoptic_png_to_semantic(
    panoptic_file: str, semantic_file: str, segments: List[dict], id_map: Dict[int, int]
) -> None:
    """Write the semantic PNG of one panoptic PNG (see the module docstring)."""
    if not os.path.isfile(panoptic_file):
        raise FileNotFoundError(f"Panoptic PNG {panoptic_file!r} (listed in the JSON) is missing")
    with Image.open(panoptic_file) as png:
        if png.mode != "RGB":
            raise ValueError(f"Panoptic PNG {panoptic_file!r} has mode {png.mode}; expected RGB")
        rgb = np.asarray(png, dtype=np.uint32)
    segment_ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    semantic = np.full(segment_ids.shape, IGNORE_LABEL, dtype=np.uint8)
    for segment in segments:
        category_id = segment["category_id"]
        if category_id not in id_map:
            raise ValueError(
                f"Segment {segment['id']} of {panoptic_file!r} has unknown category id {category_id}"
            )
        semantic[segment_ids == segment["id"]] = id_map[category_id]
    Image.fromarray(semantic).save(semantic_file)


def convert_split(
    panoptic_json: str,
    panoptic_root: str,
    sem_seg_root: str,
    id_map: Dict[int, int],
    workers: int,
) -> int:
    """Convert every annotation of ``panoptic_json``; returns the number of PNGs written."""
    for description, path in (
        ("panoptic JSON", panoptic_json),
        ("panoptic PNG folder", panoptic_root),
    ):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"The {description} {path!r} does not exist; download COCO panoptic 2017 "
                "(see datasets/README.md) or set $DETECTRON2_DATASETS"
            )
    if len(id_map) >= IGNORE_LABEL:
        raise ValueError(f"{len(id_map)} categories do not fit in uint8 labels next to 255")
    with open(panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    os.makedirs(sem_seg_root, exist_ok=True)
    tasks = [
        (
            os.path.join(panoptic_root, a["file_name"]),
            os.path.join(sem_seg_root, a["file_name"]),
            a["segments_info"],
        )
        for a in annotations
    ]
    convert = functools.partial(panoptic_png_to_semantic, id_map=id_map)
    map_with_progress(convert, tasks, workers, os.path.basename(sem_seg_root))
    return len(tasks)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["val2017", "train2017"])
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args(argv)

    coco_root = os.path.join(
        os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "coco"
    )
    id_map = coco_category_id_map()
    for split in args.splits:
        start = time.time()
        output = os.path.join(coco_root, f"panoptic_semseg_{split}")
        count = convert_split(
            os.path.join(coco_root, "annotations", f"panoptic_{split}.json"),
            os.path.join(coco_root, f"panoptic_{split}"),
            output,
            id_map,
            args.workers,
        )
        print(f"{split}: wrote {count} semantic PNGs to {output} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
