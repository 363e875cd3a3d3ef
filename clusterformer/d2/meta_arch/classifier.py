"""``ClusterFormerClassifier``: image classification with any Detectron2 backbone."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from torch import Tensor, nn

from ...modeling.backbone import ClassificationHead
from ...modeling.mixup import MixupCutmix


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
    (every output must feed the loss for DDP without unused parameters); the builder sets
    ``MODEL.CLUSTERFORMER.OUT_FEATURES`` accordingly.
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
        c = cfg.MODEL.CLASSIFIER
        if cfg.MODEL.BACKBONE.NAME == "D2ClusterFormer":
            cfg = cfg.clone()
            cfg.defrost()
            stages = ["res2", "res3", "res4", "res5"]
            cfg.MODEL.CLUSTERFORMER.OUT_FEATURES = (
                stages[-1:] if c.POOLING == "last_stage" else stages
            )
        backbone = build_backbone(cfg)
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

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        images = self.preprocess_images(batched_inputs)
        if not self.training:
            logits = self.head(self.backbone(images))
            return [{"class_scores": p} for p in logits.float().softmax(-1)]
        if any("label" not in x for x in batched_inputs):
            raise ValueError("ClusterFormerClassifier: training inputs need a 'label'")
        labels = torch.tensor([int(x["label"]) for x in batched_inputs], device=self.device)
        images, targets = self.mixup(images, labels)
        logits = self.head(self.backbone(images))
        loss = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
        return {"loss_cls": loss}
