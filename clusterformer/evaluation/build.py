"""Pick Detectron2's standard evaluators from a data set's ``evaluator_type`` (Detectron2 layer)."""

from __future__ import annotations

import os
from typing import List

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

# evaluator_type values this project understands; the message of an unknown one lists them.
KNOWN_EVALUATOR_TYPES = (
    "coco_panoptic_seg",
    "ade20k_panoptic_seg",
    "coco",
    "sem_seg",
    "classification",
)


def _coco_tasks(cfg: CfgNode) -> tuple:
    # Boxes are always predicted (from the box head with BOX_ON, else computed from the masks);
    # masks unless the model is a detection-only one (MASK_ON False).
    return ("bbox", "segm") if cfg.MODEL.CLUSTER_DECODER.MASK_ON else ("bbox",)


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """Evaluators for ``dataset_name``, chosen by its metadata's ``evaluator_type``.

    ``coco_panoptic_seg`` / ``ade20k_panoptic_seg`` combine the panoptic (panopticapi PQ),
    instance (pycocotools AP, when the metadata names an instances ``json_file``) and semantic
    (mIoU) evaluators as the ``MODEL.CLUSTER_DECODER.TEST.*_ON`` switches ask.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", None)
    test = cfg.MODEL.CLUSTER_DECODER.TEST
    evaluators: List[DatasetEvaluator] = []
    if evaluator_type in ("coco_panoptic_seg", "ade20k_panoptic_seg"):
        if test.SEMANTIC_ON:
            evaluators.append(
                SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
            )
        if (test.INSTANCE_ON or test.DETECTION_ON) and meta.get("json_file", None):
            evaluators.append(
                COCOEvaluator(dataset_name, tasks=_coco_tasks(cfg), output_dir=output_folder)
            )
        if test.PANOPTIC_ON:
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    elif evaluator_type == "coco":
        if not (test.INSTANCE_ON or test.DETECTION_ON):
            raise ValueError(
                f"Data set {dataset_name!r} is evaluated with COCOEvaluator, but the model returns "
                "no instances: turn on MODEL.CLUSTER_DECODER.TEST.INSTANCE_ON (masks) or "
                "TEST.DETECTION_ON (boxes)"
            )
        evaluators.append(
            COCOEvaluator(dataset_name, tasks=_coco_tasks(cfg), output_dir=output_folder)
        )
    elif evaluator_type == "sem_seg":
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    elif evaluator_type == "classification":
        from .classification_evaluation import ClassificationEvaluator

        evaluators.append(ClassificationEvaluator(dataset_name, output_dir=output_folder))
    else:
        raise ValueError(
            f"Data set {dataset_name!r} has evaluator_type={evaluator_type!r}; "
            f"known types: {', '.join(KNOWN_EVALUATOR_TYPES)}"
        )
    if not evaluators:
        raise ValueError(
            f"No evaluator enabled for {dataset_name!r} (evaluator_type={evaluator_type!r}): "
            "turn on at least one of MODEL.CLUSTER_DECODER.TEST.{SEMANTIC,INSTANCE,PANOPTIC}_ON"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
