"""Test-time augmentation for semantic segmentation (``TEST.AUG.*``), as Mask2Former does it.

Mask2Former's ``train_net.py`` wraps the model in its ``SemanticSegmentorWithTTA`` when
``TEST.AUG.ENABLED``: every test image is resized so that its short side is each of
``TEST.AUG.MIN_SIZES`` (long side at most ``TEST.AUG.MAX_SIZE``), also mirrored when
``TEST.AUG.FLIP``, and the model's ``sem_seg`` scores of all these inputs are averaged (mirrored
ones mirrored back first). :class:`SemanticSegmentorWithTTA` is that wrapper for this project's
model. It fits because the model returns ``sem_seg`` at the size the input dict asks for with
``height`` / ``width`` (the original image size, kept by Detectron2's ``DatasetMapperTTA``), so
the scores of every augmented input are already on the original pixel grid.

Only ``sem_seg`` is augmented: averaging scores has no counterpart for panoptic segments,
instances or boxes (Mask2Former does not augment them either; its wrapper returns ``sem_seg``
only, and the other evaluators would fail on it). :func:`check_test_augmentation` therefore
rejects ``TEST.AUG.ENABLED`` with an error naming the key for every model and data set whose
evaluation needs other outputs, before anything is trained or evaluated.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# The evaluator types (clusterformer.evaluation.build_evaluator) whose evaluators read only
# ``sem_seg`` when the model returns only semantic segmentation.
SEMANTIC_EVALUATOR_TYPES = ("sem_seg", "coco_panoptic_seg", "ade20k_panoptic_seg")
# Output switches of the segmentation model that test-time augmentation cannot average.
NON_SEMANTIC_SWITCHES = ("PANOPTIC_ON", "INSTANCE_ON", "DETECTION_ON")


def check_test_augmentation(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming ``TEST.AUG.ENABLED`` unless test-time augmentation applies to
    ``cfg``: a ``ClusterFormer`` model that returns only semantic segmentation, valid
    ``TEST.AUG.MIN_SIZES`` / ``MAX_SIZE``, and test sets evaluated on ``sem_seg``. Does nothing
    when the key is off."""
    aug = cfg.TEST.AUG
    if not aug.ENABLED:
        return
    prefix = "TEST.AUG.ENABLED=True: test-time augmentation averages semantic-segmentation scores"
    if cfg.MODEL.META_ARCHITECTURE != "ClusterFormer":
        raise ValueError(
            f"{prefix} (Mask2Former's SemanticSegmentorWithTTA) and is implemented for semantic "
            f"segmentation only, not for MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}; "
            "set TEST.AUG.ENABLED False"
        )
    test = cfg.MODEL.CLUSTER_DECODER.TEST
    enabled = [
        f"MODEL.CLUSTER_DECODER.TEST.{name}" for name in NON_SEMANTIC_SWITCHES if test.get(name)
    ]
    if enabled or not test.SEMANTIC_ON or not cfg.MODEL.CLUSTER_DECODER.MASK_ON:
        reason = (
            f"{', '.join(enabled)} {'is' if len(enabled) == 1 else 'are'} on"
            if enabled
            else "MODEL.CLUSTER_DECODER.TEST.SEMANTIC_ON (and MASK_ON) must be on"
        )
        raise ValueError(
            f"{prefix}; panoptic segments, instances and boxes have no augmented counterpart, so "
            f"it is supported only for a model that returns semantic segmentation alone, and "
            f"here {reason}. Set TEST.AUG.ENABLED False, or evaluate semantic segmentation only "
            "(MODEL.CLUSTER_DECODER.TEST.SEMANTIC_ON True, PANOPTIC_ON / INSTANCE_ON / "
            "DETECTION_ON False)"
        )
    sizes = list(aug.MIN_SIZES) if isinstance(aug.MIN_SIZES, (list, tuple)) else [aug.MIN_SIZES]
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(
            f"TEST.AUG.MIN_SIZES={aug.MIN_SIZES!r}: must be a non-empty list of positive integers "
            "(the short sides the test images are resized to)"
        )
    if isinstance(aug.MAX_SIZE, bool) or not isinstance(aug.MAX_SIZE, int) or aug.MAX_SIZE < 1:
        raise ValueError(f"TEST.AUG.MAX_SIZE={aug.MAX_SIZE!r}: must be a positive integer")
    for dataset_name in cfg.DATASETS.TEST:
        if dataset_name not in MetadataCatalog:
            continue  # unregistered: the test loader names it when evaluation starts
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type not in SEMANTIC_EVALUATOR_TYPES:
            raise ValueError(
                f"TEST.AUG.ENABLED=True: the test set {dataset_name!r} is evaluated with "
                f"evaluator_type={evaluator_type!r}, which needs more than semantic segmentation; "
                f"test-time augmentation supports evaluator types {SEMANTIC_EVALUATOR_TYPES}"
            )


class SemanticSegmentorWithTTA(nn.Module):
    """``model`` with ``TEST.AUG`` test-time augmentation of its ``sem_seg`` output.

    Called with a list of test-mapper dicts (``"image"`` ``(C, H, W)``, ``"height"``,
    ``"width"``), it returns ``[{"sem_seg": (K, height, width)}]``: the mean of the model's
    ``sem_seg`` over every augmented copy of each image (``DatasetMapperTTA(cfg)``: one per
    ``TEST.AUG.MIN_SIZES`` entry, twice with ``TEST.AUG.FLIP``), the mirrored copies' scores
    mirrored back. A DDP-wrapped model is unwrapped (inference needs no gradient sync).
    """

    def __init__(self, cfg: CfgNode, model: nn.Module, tta_mapper=None):
        super().__init__()
        check_test_augmentation(cfg)
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)

    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, torch.Tensor]]:
        return [self._inference_one_image(x) for x in batched_inputs]

    @torch.no_grad()
    def _inference_one_image(self, dataset_dict: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        for key in ("image", "height", "width"):
            if key not in dataset_dict:
                raise ValueError(
                    f"SemanticSegmentorWithTTA: the input {dataset_dict.get('file_name', '')!r} "
                    f"has no {key!r}; it takes the test mapper's outputs"
                )
        total = None
        augmented = self.tta_mapper(copy.copy(dataset_dict))
        for x in augmented:
            transforms = x.pop("transforms")
            scores = self.model([x])[0]["sem_seg"]
            if any(isinstance(t, HFlipTransform) for t in transforms.transforms):
                scores = scores.flip(dims=[2])
            total = scores if total is None else total + scores
        return {"sem_seg": total / len(augmented)}
