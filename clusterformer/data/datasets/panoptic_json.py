"""Load a COCO-format panoptic annotation (JSON + PNG folder) into Detectron2 data set dicts."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional


def load_panoptic_json(
    panoptic_json: str,
    image_root: str,
    panoptic_root: str,
    sem_seg_root: Optional[str],
    thing_dataset_id_to_contiguous_id: Dict[int, int],
    stuff_dataset_id_to_contiguous_id: Dict[int, int],
) -> List[Dict[str, Any]]:
    """One dict per annotated image:

    ``{"file_name", "image_id", "height", "width", "pan_seg_file_name", "sem_seg_file_name"
    (when ``sem_seg_root`` is given), "segments_info"}`` where each segment keeps its ``id``,
    ``iscrowd``, ``area``, ``bbox`` and gets a contiguous ``category_id`` plus ``isthing``.

    The image file name, height and width come from the JSON's ``images`` entry of the annotation
    (Mask2Former assumed ".jpg"); an unknown image or category id raises, naming the JSON file.
    """
    with open(panoptic_json) as f:
        content = json.load(f)
    images = {image["id"]: image for image in content.get("images", [])}

    dataset_dicts = []
    for annotation in content["annotations"]:
        image = images.get(annotation["image_id"])
        if image is None:
            raise ValueError(
                f"{panoptic_json!r}: annotation {annotation['file_name']!r} refers to image id "
                f"{annotation['image_id']!r}, which is not in the 'images' list"
            )
        segments_info = []
        for segment in annotation["segments_info"]:
            dataset_id = segment["category_id"]
            if dataset_id in thing_dataset_id_to_contiguous_id:
                contiguous_id, isthing = thing_dataset_id_to_contiguous_id[dataset_id], True
            elif dataset_id in stuff_dataset_id_to_contiguous_id:
                contiguous_id, isthing = stuff_dataset_id_to_contiguous_id[dataset_id], False
            else:
                raise ValueError(
                    f"{panoptic_json!r}: segment {segment['id']} of {annotation['file_name']!r} "
                    f"has unknown category id {dataset_id!r}"
                )
            segments_info.append({**segment, "category_id": contiguous_id, "isthing": isthing})
        record = {
            "file_name": os.path.join(image_root, image["file_name"]),
            "image_id": annotation["image_id"],
            "height": image["height"],
            "width": image["width"],
            "pan_seg_file_name": os.path.join(panoptic_root, annotation["file_name"]),
            "segments_info": segments_info,
        }
        if sem_seg_root is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_root, annotation["file_name"])
        dataset_dicts.append(record)
    if not dataset_dicts:
        raise ValueError(f"{panoptic_json!r} has no annotations")
    return dataset_dicts


def check_first_record_files(dataset_name: str, dataset_dicts: List[Dict[str, Any]]) -> None:
    """Cheap sanity check that the JSON matches the folders: the first record's files exist."""
    first = dataset_dicts[0]
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        if key in first and not os.path.isfile(first[key]):
            raise FileNotFoundError(
                f"Data set {dataset_name!r}: {key} {first[key]!r} of the first annotation does not "
                "exist; the annotation JSON does not match the folders (see datasets/README.md)"
            )
