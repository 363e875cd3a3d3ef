"""Loader of COCO-format panoptic annotations with their derived semantic PNGs.

It produces the dicts that Mask2Former's ``coco_2017_*_panoptic_with_sem_seg`` data sets give
(``file_name``, ``image_id``, ``pan_seg_file_name``, ``sem_seg_file_name``, ``segments_info``
with contiguous ``category_id`` and ``isthing``), plus ``height`` and ``width``. Unlike
Mask2Former's loader it takes the image file names from the JSON's ``images`` list instead of
assuming ``.jpg``, so it serves any data set in COCO's panoptic format.
"""

import json
import os
from typing import Dict, List

from detectron2.utils.file_io import PathManager


def load_coco_panoptic_with_sem_seg(
    panoptic_json: str,
    image_root: str,
    panoptic_root: str,
    sem_seg_root: str,
    thing_dataset_id_to_contiguous_id: Dict[int, int],
    stuff_dataset_id_to_contiguous_id: Dict[int, int],
) -> List[dict]:
    """Read a COCO panoptic JSON into Detectron2 dicts.

    Args:
        panoptic_json: e.g. ``coco/annotations/panoptic_val2017.json``.
        image_root: folder of the images named in the JSON's ``images``.
        panoptic_root: folder of the panoptic PNGs named in ``annotations[*].file_name``.
        sem_seg_root: folder of the semantic PNGs, named like the panoptic PNGs.
        thing_dataset_id_to_contiguous_id: thing category ids; a segment whose category is here
            gets ``isthing=True`` and this contiguous id.
        stuff_dataset_id_to_contiguous_id: contiguous ids of the other categories (Mask2Former's
            convention maps *all* categories here, so the semantic evaluator sees every class).

    Raises:
        ValueError: a segment's category is in neither mapping, or an annotation names an
            image missing from ``images``.
        FileNotFoundError: the first image or label file does not exist.
    """
    with PathManager.open(panoptic_json) as f:
        content = json.load(f)
    images = {image["id"]: image for image in content["images"]}
    dataset_dicts = []
    for annotation in content["annotations"]:
        image_id = annotation["image_id"]
        if image_id not in images:
            raise ValueError(
                f"{panoptic_json}: annotation of image id {image_id} has no image entry"
            )
        image = images[image_id]
        segments_info = []
        for segment in annotation["segments_info"]:
            category_id = segment["category_id"]
            if category_id in thing_dataset_id_to_contiguous_id:
                contiguous, isthing = thing_dataset_id_to_contiguous_id[category_id], True
            elif category_id in stuff_dataset_id_to_contiguous_id:
                contiguous, isthing = stuff_dataset_id_to_contiguous_id[category_id], False
            else:
                raise ValueError(
                    f"{panoptic_json}: segment {segment['id']} of image {image_id} has category "
                    f"id {category_id}, which the metadata does not know"
                )
            segments_info.append({**segment, "category_id": contiguous, "isthing": isthing})
        dataset_dicts.append(
            {
                "file_name": os.path.join(image_root, image["file_name"]),
                "image_id": image_id,
                "height": image["height"],
                "width": image["width"],
                "pan_seg_file_name": os.path.join(panoptic_root, annotation["file_name"]),
                "sem_seg_file_name": os.path.join(sem_seg_root, annotation["file_name"]),
                "segments_info": segments_info,
            }
        )
    if not dataset_dicts:
        raise ValueError(f"{panoptic_json} has no annotations")
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        if not PathManager.isfile(dataset_dicts[0][key]):
            raise FileNotFoundError(
                f"{panoptic_json}: {key} {dataset_dicts[0][key]} does not exist"
            )
    return dataset_dicts
