"""Load a COCO-format panoptic annotation (JSON + PNG folder, optionally a semantic PNG folder)
into Detectron2 data set dicts: the one loader of COCO panoptic, ADE20K panoptic and shapes.

It produces the dicts of Mask2Former's ``coco_2017_*_panoptic_with_sem_seg`` data sets, but takes
the image file names (and sizes) from the JSON's ``images`` list instead of assuming ``.jpg``, so
it serves any data set in COCO's panoptic format. Needs no detectron2.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from ..image_io import path_manager
from .path_safety import resolve_inside


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

    Args:
        panoptic_json: e.g. ``coco/annotations/panoptic_val2017.json``.
        image_root: folder of the images named in the JSON's ``images``.
        panoptic_root: folder of the panoptic PNGs named in ``annotations[*].file_name``.
        sem_seg_root: folder of the semantic PNGs, named like the panoptic PNGs (None: none).
        thing_dataset_id_to_contiguous_id: thing category ids; a segment whose category is here
            gets ``isthing=True`` and this contiguous id.
        stuff_dataset_id_to_contiguous_id: contiguous ids of the other categories (Mask2Former's
            convention maps *all* categories here, so the semantic evaluator sees every class).

    Raises:
        ValueError naming the JSON file: an annotation's image is not in ``images`` (naming the
        annotation and the image id), a segment's category is in neither mapping (naming the
        segment, its annotation and image, and the category id), or there is no annotation.
        ``UnsafePathError`` (a ``ValueError``) naming the JSON and the entry: an image or
        annotation ``file_name`` leads outside ``image_root`` / ``panoptic_root`` (``..``, or an
        absolute path elsewhere).
    """
    with path_manager().open(panoptic_json, "r") as f:
        content = json.load(f)
    images = {image["id"]: image for image in content.get("images", [])}

    dataset_dicts = []
    for annotation in content["annotations"]:
        image_id = annotation["image_id"]
        image = images.get(image_id)
        if image is None:
            raise ValueError(
                f"{panoptic_json!r}: annotation {annotation['file_name']!r} refers to image id "
                f"{image_id!r}, which is not in the 'images' list"
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
                    f"(image id {image_id!r}) has unknown category id {dataset_id!r}"
                )
            segments_info.append({**segment, "category_id": contiguous_id, "isthing": isthing})
        panoptic_file = resolve_inside(
            panoptic_root,
            annotation["file_name"],
            source=panoptic_json,
            entry=f"annotation of image id {image_id!r}",
        )
        record = {
            "file_name": resolve_inside(
                image_root, image["file_name"], source=panoptic_json, entry=f"image id {image_id!r}"
            ),
            "image_id": image_id,
            "height": image["height"],
            "width": image["width"],
            "pan_seg_file_name": panoptic_file,
            "segments_info": segments_info,
        }
        if sem_seg_root is not None:
            # The semantic PNG has the panoptic PNG's name, relative to its own folder.
            relative = os.path.relpath(panoptic_file, panoptic_root)
            record["sem_seg_file_name"] = os.path.join(sem_seg_root, relative)
        dataset_dicts.append(record)
    if not dataset_dicts:
        raise ValueError(f"{panoptic_json!r} has no annotations")
    return dataset_dicts


def check_first_record_files(
    dataset_name: str, panoptic_json: str, dataset_dicts: List[Dict[str, Any]]
) -> None:
    """Cheap sanity check that the JSON matches the folders: the first record's files exist.

    Raises ``FileNotFoundError`` naming the data set, the JSON, the key and the missing file.
    """
    first = dataset_dicts[0]
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        if key in first and not path_manager().isfile(first[key]):
            raise FileNotFoundError(
                f"Data set {dataset_name!r}: {key} {first[key]!r} of the first annotation of "
                f"{panoptic_json!r} does not exist; the annotation JSON does not match the "
                "folders (see datasets/README.md)"
            )
