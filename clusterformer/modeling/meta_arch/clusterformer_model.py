"""``ClusterFormer``: the universal segmentation meta-architecture (Detectron2 layer).

It is :class:`~clusterformer.modeling.segmenter.ClusterFormerSegmenter` plus what Detectron2
expects of a meta-architecture: it takes the list of dicts a dataset mapper produces, normalises
and pads the images, computes the training losses from ``instances`` targets, and at inference
returns Detectron2's standard outputs (``sem_seg``, ``panoptic_seg``, ``instances``) so its
evaluators and ``Visualizer`` work unchanged.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Set

import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from ..criterion import SetCriterion
from ..matcher import HungarianMatcher
from ..pixel_decoder import MSDeformAttnPixelDecoder
from ..postprocessing import (
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)
from ..segmenter import ClusterFormerSegmenter
from ..transformer_decoder import ClusteringTransformerDecoder


def thing_ids_from_metadata(metadata) -> Set[int]:
    """Contiguous ids of the thing classes: from ``thing_dataset_id_to_contiguous_id`` when the
    data set distinguishes things from stuff, else every class (an instance-only data set)."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if mapping:
        return set(mapping.values())
    return set(range(len(metadata.get("thing_classes", []))))


def build_pixel_decoder(cfg: CfgNode, backbone: Backbone) -> MSDeformAttnPixelDecoder:
    """``MODEL.SEM_SEG_HEAD`` -> the deformable-attention pixel decoder on ``backbone``'s outputs."""
    h = cfg.MODEL.SEM_SEG_HEAD
    if h.PIXEL_DECODER_NAME != "MSDeformAttnPixelDecoder":
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={h.PIXEL_DECODER_NAME!r}: only "
            "'MSDeformAttnPixelDecoder' is implemented"
        )
    shapes = backbone.output_shape()
    missing = [f for f in h.IN_FEATURES if f not in shapes]
    if missing:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES asks for {missing}, but the backbone only outputs "
            f"{sorted(shapes)} (check MODEL.CLUSTERFORMER.OUT_FEATURES)"
        )
    return MSDeformAttnPixelDecoder(
        {f: shapes[f].channels for f in h.IN_FEATURES},
        {f: shapes[f].stride for f in h.IN_FEATURES},
        in_features=list(h.IN_FEATURES),
        transformer_in_features=list(h.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
        conv_dim=h.CONVS_DIM,
        mask_dim=h.MASK_DIM,
        norm=h.NORM,
        common_stride=h.COMMON_STRIDE,
        num_layers=h.TRANSFORMER_ENC_LAYERS,
        n_heads=h.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
        n_points=h.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
        dim_feedforward=h.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
        dropout=h.DEFORMABLE_TRANSFORMER_ENCODER_DROPOUT,
    )


def build_transformer_decoder(cfg: CfgNode) -> ClusteringTransformerDecoder:
    """``MODEL.CLUSTER_DECODER`` -> the clustering (or masked-attention) transformer decoder."""
    h, d = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.CLUSTER_DECODER
    return ClusteringTransformerDecoder(
        h.CONVS_DIM,
        h.NUM_CLASSES,
        hidden_dim=d.HIDDEN_DIM,
        num_queries=d.NUM_OBJECT_QUERIES,
        nheads=d.NHEADS,
        dim_feedforward=d.DIM_FEEDFORWARD,
        dec_layers=d.DEC_LAYERS,
        pre_norm=d.PRE_NORM,
        mask_dim=h.MASK_DIM,
        enforce_input_project=d.ENFORCE_INPUT_PROJ,
        cross_attention=d.CROSS_ATTENTION,
        clustering_iterations=d.CLUSTERING_ITERATIONS,
        dropout=d.DROPOUT,
        num_feature_levels=len(h.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
        mask_threshold=d.ASSIGNMENT_MASK_THRESHOLD,
        restrict_to_masks=d.RESTRICT_TO_MASKS,
    )


def build_criterion(cfg: CfgNode) -> SetCriterion:
    """Matcher costs and loss weights from ``MODEL.CLUSTER_DECODER`` (the same numbers)."""
    d = cfg.MODEL.CLUSTER_DECODER
    matcher = HungarianMatcher(
        cost_class=d.CLASS_WEIGHT,
        cost_mask=d.MASK_WEIGHT,
        cost_dice=d.DICE_WEIGHT,
        num_points=d.TRAIN_NUM_POINTS,
    )
    return SetCriterion(
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        matcher,
        eos_coef=d.NO_OBJECT_WEIGHT,
        class_weight=d.CLASS_WEIGHT,
        mask_weight=d.MASK_WEIGHT,
        dice_weight=d.DICE_WEIGHT,
        losses=("labels", "masks"),
        num_points=d.TRAIN_NUM_POINTS,
        oversample_ratio=d.OVERSAMPLE_RATIO,
        importance_sample_ratio=d.IMPORTANCE_SAMPLE_RATIO,
        deep_supervision=d.DEEP_SUPERVISION,
    )


@META_ARCH_REGISTRY.register()
class ClusterFormer(ClusterFormerSegmenter):
    """Universal segmentation with a clustering decoder (semantic, instance and panoptic).

    Input: a list of mapper dicts with ``"image"`` ``(3, H, W)`` uint8 in ``INPUT.FORMAT`` order,
    optional ``"height"``/``"width"`` (output size; default: the input size) and, in training,
    ``"instances"`` with ``gt_classes`` and ``gt_masks`` (``BitMasks`` or a bool tensor).

    Training returns the weighted loss dict. Inference returns one dict per image with the enabled
    outputs: ``sem_seg`` ``(K, height, width)`` scores, ``panoptic_seg`` ``(seg (height, width)
    int32, segments_info)``, ``instances`` (``pred_masks``, ``pred_boxes`` from the masks,
    ``scores``, ``pred_classes``), and ``cluster_assignment`` ``(Q, h, w)`` (the decoder's last
    E-step assignment of pixels to queries at the level it was computed, padding cropped) when
    the decoder clusters.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        criterion: SetCriterion,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        object_mask_threshold: float,
        overlap_threshold: float,
        test_topk_per_image: int,
        thing_ids: Set[int],
    ):
        super().__init__(backbone, pixel_decoder, transformer_decoder)
        self.criterion = criterion
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.test_topk_per_image = test_topk_per_image
        self.thing_ids = set(thing_ids)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        backbone = build_backbone(cfg)
        d = cfg.MODEL.CLUSTER_DECODER
        test = d.TEST
        # Which classes are things comes from the data set (training set first, as Mask2Former).
        datasets = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
        thing_ids = thing_ids_from_metadata(MetadataCatalog.get(datasets[0])) if datasets else set()
        if test.INSTANCE_ON and not thing_ids:
            raise ValueError(
                "ClusterFormer: MODEL.CLUSTER_DECODER.TEST.INSTANCE_ON needs thing classes in the "
                f"metadata of DATASETS.TRAIN/TEST ({datasets or 'none set'})"
            )
        return {
            "backbone": backbone,
            "pixel_decoder": build_pixel_decoder(cfg, backbone),
            "transformer_decoder": build_transformer_decoder(cfg),
            "criterion": build_criterion(cfg),
            "size_divisibility": d.SIZE_DIVISIBILITY or backbone.size_divisibility,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "thing_ids": thing_ids,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_images(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        """Normalise and pad the images of a batch to a multiple of ``size_divisibility``."""
        images = []
        for x in batched_inputs:
            image = x["image"]
            if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"ClusterFormer: image {x.get('file_name', '')!r} must be "
                    f"({self.pixel_mean.shape[0]}, H, W), got {tuple(image.shape)}"
                )
            images.append((image.to(self.device).float() - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        images = self.preprocess_images(batched_inputs)
        outputs = self.predict(images.tensor)
        if self.training:
            missing = [
                x.get("file_name", i) for i, x in enumerate(batched_inputs) if "instances" not in x
            ]
            if missing:
                raise ValueError(
                    f"ClusterFormer: training inputs need 'instances' (missing for {missing[:3]}); "
                    "check INPUT.DATASET_MAPPER_NAME"
                )
            targets = self.prepare_targets([x["instances"] for x in batched_inputs], images)
            return self.criterion.weight_losses(self.criterion(outputs, targets))
        return self.inference(outputs, batched_inputs, images)

    def prepare_targets(
        self, gt_instances: List[Instances], images: ImageList
    ) -> List[Dict[str, Tensor]]:
        """Instances -> criterion targets, masks zero-padded to the batch tensor's size."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for inst in gt_instances:
            inst = inst.to(self.device)
            masks = inst.gt_masks
            masks = masks.tensor if hasattr(masks, "tensor") else masks
            padded = torch.zeros(
                (masks.shape[0], h_pad, w_pad), dtype=torch.bool, device=self.device
            )
            padded[:, : masks.shape[1], : masks.shape[2]] = masks.bool()
            targets.append({"labels": inst.gt_classes.long(), "masks": padded})
        return targets

    def inference(
        self, outputs: Dict[str, Any], batched_inputs: List[Dict[str, Any]], images: ImageList
    ) -> List[Dict[str, Any]]:
        padded_size = images.tensor.shape[-2:]
        assignment = outputs.get("pixel_assignment")
        results = []
        for i, (mask_cls, mask_logits) in enumerate(
            zip(outputs["pred_logits"], outputs["pred_masks"])
        ):
            image_size = images.image_sizes[i]
            height = batched_inputs[i].get("height", image_size[0])
            width = batched_inputs[i].get("width", image_size[1])
            mask_pred = resize_mask_logits(mask_logits, padded_size, image_size, (height, width))
            result: Dict[str, Any] = {}
            if self.semantic_on:
                result["sem_seg"] = semantic_inference(mask_cls, mask_pred)
            if self.panoptic_on:
                result["panoptic_seg"] = panoptic_inference(
                    mask_cls,
                    mask_pred,
                    object_mask_threshold=self.object_mask_threshold,
                    overlap_threshold=self.overlap_threshold,
                    thing_ids=self.thing_ids,
                )
            if self.instance_on:
                result["instances"] = self._to_instances(
                    instance_inference(
                        mask_cls,
                        mask_pred,
                        test_topk_per_image=self.test_topk_per_image,
                        thing_ids=self.thing_ids,
                        panoptic_on=self.panoptic_on,
                    ),
                    (height, width),
                )
            if assignment is not None:
                stride_h = padded_size[0] / assignment.shape[-2]
                stride_w = padded_size[1] / assignment.shape[-1]
                h = -(-image_size[0] // int(stride_h))
                w = -(-image_size[1] // int(stride_w))
                result["cluster_assignment"] = assignment[i, :, :h, :w]
            results.append(result)
        return results

    @staticmethod
    def _to_instances(pred: Dict[str, Tensor], image_size) -> Instances:
        inst = Instances(image_size)
        inst.pred_masks = pred["pred_masks"]
        inst.pred_boxes = Boxes(pred["pred_boxes"].float())
        inst.scores = pred["scores"]
        inst.pred_classes = pred["pred_classes"]
        return inst
