"""``ClusterFormerClassifier``: image classification with any Detectron2 backbone."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from torch import Tensor, nn

from ...modeling.backbone import ClassificationHead
from ...modeling.mixup import MixupCutmix
from ..backbone import D2ClusterFormer


def build_classifier_backbone(cfg: CfgNode) -> Backbone:
    """``MODEL.BACKBONE`` for the classifier. ``D2ClusterFormer`` outputs only the stages that
    ``MODEL.CLASSIFIER.POOLING`` reads (whatever ``MODEL.CLUSTERFORMER_BACKBONE.OUT_FEATURES``
    says; an unread stage would get no gradient under DDP); ``cfg`` is not modified."""
    if cfg.MODEL.BACKBONE.NAME != "D2ClusterFormer":
        return build_backbone(cfg)
    # Detectron2's build_backbone, with the output stages replaced in the keyword arguments.
    kwargs = D2ClusterFormer.from_config(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    stages = ["res2", "res3", "res4", "res5"]
    kwargs["out_features"] = stages[-1:] if cfg.MODEL.CLASSIFIER.POOLING == "last_stage" else stages
    return D2ClusterFormer(**kwargs)


@META_ARCH_REGISTRY.register()
class ClusterFormerClassifier(nn.Module):
    """Backbone -> global pooling -> LayerNorm -> linear, trained with soft-target cross-entropy.

    Input: mapper dicts with ``"image"`` ``(3, S, S)`` uint8 (all images of a batch the same size,
    as the classification mapper crops them) and, in training, ``"label"``. Training applies
    Mixup/CutMix and label smoothing (``MODEL.CLASSIFIER``) and returns ``{"loss_cls": loss}``;
    inference returns ``[{"class_scores": (K,) probabilities}]``.

    The backbone is any registered Detectron2 backbone (``MODEL.BACKBONE.NAME``), so a
    non-clustering backbone (e.g. ResNet) can be compared under the same recipe. With
    ``MODEL.CLASSIFIER.POOLING "last_stage"`` the backbone should output only its last stage
    (every output must feed the loss for DDP without unused parameters); with ``D2ClusterFormer``
    :func:`build_classifier_backbone` builds exactly the stages the pooling reads.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        mixup: MixupCutmix,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.mixup = mixup
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        """Keyword arguments from ``MODEL.CLASSIFIER`` and ``MODEL.BACKBONE`` (``cfg`` unchanged)."""
        c = cfg.MODEL.CLASSIFIER
        backbone = build_classifier_backbone(cfg)
        shapes = backbone.output_shape()
        in_channels = {
            name: shapes[name].channels for name in sorted(shapes, key=lambda n: shapes[n].stride)
        }
        return {
            "backbone": backbone,
            "head": ClassificationHead(in_channels, c.NUM_CLASSES, pooling=c.POOLING),
            "mixup": MixupCutmix(
                c.MIXUP_ALPHA,
                c.CUTMIX_ALPHA,
                prob=c.MIX_PROB,
                switch_prob=c.MIX_SWITCH_PROB,
                label_smoothing=c.LABEL_SMOOTHING,
                num_classes=c.NUM_CLASSES,
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_images(self, batched_inputs: List[Dict[str, Any]]) -> Tensor:
        sizes = {tuple(x["image"].shape) for x in batched_inputs}
        if len(sizes) != 1:
            raise ValueError(
                f"ClusterFormerClassifier: images of a batch must share one size, got {sorted(sizes)}; "
                "the classification mapper crops them (INPUT.CLASSIFICATION.*)"
            )
        images = torch.stack([x["image"] for x in batched_inputs]).to(self.device).float()
        return (images - self.pixel_mean) / self.pixel_std

    def forward(self, batched_inputs: List[Dict[str, Any]], return_cluster_ids: bool = False):
        """Training: ``{"loss_cls"}``. Inference: per image ``{"class_scores": (K,)}``, and with
        ``return_cluster_ids`` (a ClusterFormer backbone) ``"cluster_ids"``
        ``{stage: StageClusterIds}`` (ids ``(heads, H / s, W / s)`` int64, the hard clusters of
        each backbone stage's last block)."""
        if return_cluster_ids and self.training:
            raise ValueError(
                "ClusterFormerClassifier: return_cluster_ids is an inference option (eval mode)"
            )
        images = self.preprocess_images(batched_inputs)
        if not self.training:
            if not return_cluster_ids:
                logits = self.head(self.backbone(images))
                return [{"class_scores": p} for p in logits.float().softmax(-1)]
            features, cluster_ids = self.backbone(images, return_cluster_ids=True)
            logits = self.head(features)
            return [
                {
                    "class_scores": p,
                    "cluster_ids": {
                        name: stage._replace(ids=stage.ids[i])
                        for name, stage in cluster_ids.items()
                    },
                }
                for i, p in enumerate(logits.float().softmax(-1))
            ]
        if any("label" not in x for x in batched_inputs):
            raise ValueError("ClusterFormerClassifier: training inputs need a 'label'")
        labels = torch.tensor([int(x["label"]) for x in batched_inputs], device=self.device)
        images, targets = self.mixup(images, labels)
        logits = self.head(self.backbone(images))
        loss = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
        return {"loss_cls": loss}
