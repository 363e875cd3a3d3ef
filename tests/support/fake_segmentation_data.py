"""Tiny fake COCO / ADE20K data sets written into a test's tmp folder (32 x 48 images).

Each builder returns what it wrote, so tests can compare mapper outputs with known geometry.
Layouts follow datasets/README.md, so the registration loaders and prepare scripts run on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

HEIGHT, WIDTH = 32, 48

# COCO category ids (dataset ids) and their contiguous ids in COCO_CATEGORIES order.
PERSON, CAR, BANNER = 1, 3, 92
PERSON_CONTIGUOUS, CAR_CONTIGUOUS, BANNER_CONTIGUOUS = 0, 2, 80

# Regions as (row0, row1, col0, col1), end-exclusive.
PERSON_BOX = (4, 12, 2, 10)  # a thing
CAR_BOX = (20, 30, 30, 44)  # a crowd thing
BANNER_BOX = (0, 32, 12, 28)  # a stuff band
PERSON_COLOR = (250, 20, 20)
CAR_COLOR = (20, 250, 20)
BANNER_COLOR = (20, 20, 250)


def region_mask(box: Tuple[int, int, int, int], hw=(HEIGHT, WIDTH)) -> np.ndarray:
    row0, row1, col0, col1 = box
    mask = np.zeros(hw, dtype=bool)
    mask[row0:row1, col0:col1] = True
    return mask


def ids_to_rgb(segment_ids: np.ndarray) -> np.ndarray:
    """COCO panoptic encoding of an (H, W) id map."""
    return np.stack(
        [segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], axis=-1
    ).astype(np.uint8)


def write_image(
    path: Path, regions: List[Tuple[np.ndarray, Tuple[int, int, int]]], hw=None
) -> None:
    """RGB image, grey background, each (mask, colour) region painted in order."""
    hw = hw or (HEIGHT, WIDTH)
    image = np.full((*hw, 3), 100, dtype=np.uint8)
    for mask, color in regions:
        image[mask] = color
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def coco_scene() -> Dict:
    """Segment ids and masks of the one fake COCO scene (person, crowd car, banner stuff)."""
    person = region_mask(PERSON_BOX)
    car = region_mask(CAR_BOX)
    banner = region_mask(BANNER_BOX) & ~person & ~car
    segment_ids = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
    segment_ids[banner] = 300
    segment_ids[person] = 1001
    segment_ids[car] = 70000  # > 65535: exercises the blue channel
    return {"segment_ids": segment_ids, "person": person, "car": car, "banner": banner}


def make_coco(root: Path, split: str = "train2017", num_images: int = 2) -> Dict:
    """Write ``root/coco`` with images, panoptic PNGs + JSON and an instances JSON.

    Every image shows the same scene. The instances JSON has the person as a polygon, the car
    (crowd) as uncompressed RLE and a second person as compressed RLE.
    """
    coco = root / "coco"
    scene = coco_scene()
    images, panoptic_annotations, instance_annotations = [], [], []
    second_person = region_mask((14, 18, 36, 46))
    for index in range(num_images):
        image_id = index + 1
        file_stem = f"{image_id:012d}"
        write_image(
            coco / split / f"{file_stem}.png",
            [
                (scene["banner"], BANNER_COLOR),
                (scene["person"], PERSON_COLOR),
                (scene["car"], CAR_COLOR),
            ],
        )
        (coco / f"panoptic_{split}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids_to_rgb(scene["segment_ids"])).save(
            coco / f"panoptic_{split}" / f"{file_stem}.png"
        )
        images.append(
            {"id": image_id, "file_name": f"{file_stem}.png", "height": HEIGHT, "width": WIDTH}
        )
        panoptic_annotations.append(
            {
                "image_id": image_id,
                "file_name": f"{file_stem}.png",
                "segments_info": [
                    {
                        "id": 1001,
                        "category_id": PERSON,
                        "iscrowd": 0,
                        "area": 64,
                        "bbox": [2, 4, 8, 8],
                    },
                    {
                        "id": 70000,
                        "category_id": CAR,
                        "iscrowd": 1,
                        "area": 140,
                        "bbox": [30, 20, 14, 10],
                    },
                    {
                        "id": 300,
                        "category_id": BANNER,
                        "iscrowd": 0,
                        "area": 1,
                        "bbox": [12, 0, 16, 32],
                    },
                ],
            }
        )
        row0, row1, col0, col1 = PERSON_BOX
        polygon = [col0, row0, col1, row0, col1, row1, col0, row1]
        car_rle = mask_util.encode(np.asfortranarray(scene["car"].astype(np.uint8)))
        uncompressed_counts = run_lengths(scene["car"])
        second_rle = mask_util.encode(np.asfortranarray(second_person.astype(np.uint8)))
        instance_annotations += [
            {
                "id": 10 * image_id + 1,
                "image_id": image_id,
                "category_id": PERSON,
                "segmentation": [[float(v) for v in polygon]],
                "bbox": [col0, row0, col1 - col0, row1 - row0],
                "area": 64.0,
                "iscrowd": 0,
            },
            {
                "id": 10 * image_id + 2,
                "image_id": image_id,
                "category_id": CAR,
                "segmentation": {"size": [HEIGHT, WIDTH], "counts": uncompressed_counts},
                "bbox": [float(v) for v in mask_util.toBbox(car_rle)],
                "area": 140.0,
                "iscrowd": 1,
            },
            {
                "id": 10 * image_id + 3,
                "image_id": image_id,
                "category_id": PERSON,
                "segmentation": {"size": [HEIGHT, WIDTH], "counts": second_rle["counts"].decode()},
                "bbox": [36.0, 14.0, 10.0, 4.0],
                "area": 40.0,
                "iscrowd": 0,
            },
        ]
    categories = [
        {"id": PERSON, "name": "person", "isthing": 1, "supercategory": "person"},
        {"id": CAR, "name": "car", "isthing": 1, "supercategory": "vehicle"},
        {"id": BANNER, "name": "banner", "isthing": 0, "supercategory": "textile"},
    ]
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    with open(coco / "annotations" / f"panoptic_{split}.json", "w") as f:
        json.dump(
            {"images": images, "annotations": panoptic_annotations, "categories": categories}, f
        )
    with open(coco / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(
            {
                "images": images,
                "annotations": instance_annotations,
                "categories": [c for c in categories if c["isthing"]],
            },
            f,
        )
    return {"coco": coco, "scene": scene, "second_person": second_person, "split": split}


def run_lengths(mask: np.ndarray) -> List[int]:
    """Uncompressed COCO RLE counts of a mask (column-major, starting with a run of zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


# ADE20K: raw labels are class + 1 (0 = other). Class 0 "wall" and 2 "sky" are stuff;
# 7 "bed" and 12 "person" are things (instance categories 1 and 4, see ADE20K_THING_IDS).
WALL, SKY, BED, ADE_PERSON = 0, 2, 7, 12
BED_INSTANCE_CATEGORY, PERSON_INSTANCE_CATEGORY = 1, 4


def ade_scene() -> Dict[str, np.ndarray]:
    """Raw semantic labels and instance PNG of the fake ADE20K scene.

    Sky on top, wall below, a bed instance and a person instance; a second "person" area in the
    semantic map without an instance (it must become void in panoptic), and "other" pixels.
    """
    raw = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    raw[:10] = SKY + 1
    raw[10:] = WALL + 1
    raw[28:, :6] = 0  # "other"
    bed = region_mask((14, 24, 4, 20))
    person = region_mask((12, 26, 30, 36))
    orphan_person = region_mask((2, 6, 40, 46))
    raw[bed] = BED + 1
    raw[person] = ADE_PERSON + 1
    raw[orphan_person] = ADE_PERSON + 1
    instance = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    instance[bed] = (BED_INSTANCE_CATEGORY, 1, 0)
    # The person instance also covers two wall pixels next to it: things are pasted over stuff.
    person_instance = person | region_mask((12, 13, 36, 38))
    instance[person_instance] = (PERSON_INSTANCE_CATEGORY, 2, 0)
    return {
        "raw": raw,
        "instance": instance,
        "bed": bed,
        "person": person_instance,
        "orphan_person": orphan_person,
    }


def make_ade(root: Path, num_images: int = 2) -> Dict:
    """Write ``root/ADEChallengeData2016`` (jpg images, raw labels, instance PNGs) for both splits."""
    ade = root / "ADEChallengeData2016"
    scene = ade_scene()
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for index in range(num_images):
            stem = f"{prefix}_{index + 1:08d}"
            write_image(ade / "images" / split / f"{stem}.jpg", [(scene["bed"], (200, 0, 0))])
            for folder, array in (
                ("annotations", scene["raw"]),
                ("annotations_instance", scene["instance"]),
            ):
                (ade / folder / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(ade / folder / split / f"{stem}.png")
    return {"ade": ade, "scene": scene}
