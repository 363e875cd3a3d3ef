"""The universal segmentation network without its training/data wrapper (plain PyTorch).

``ClusterFormerSegmenter`` chains backbone -> pixel decoder -> clustering transformer decoder on
normalised, padded images. The Detectron2 meta-architecture
(``clusterformer.d2.meta_arch.ClusterFormer``) inherits from it and adds pre-processing, the
criterion and Detectron2's output formats; benchmarks and GPU machines without detectron2 use it
directly through :func:`build_clusterformer_segmenter`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from torch import Tensor, nn

from .backbone import build_clusterformer_backbone
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import ClusteringTransformerDecoder


class ClusterFormerSegmenter(nn.Module):
    """backbone -> pixel decoder -> transformer decoder.

    Args:
        backbone: maps ``(B, 3, H, W)`` to ``{name: (B, C, H / s, W / s)}``.
        pixel_decoder: maps those features to ``(mask_features, multi_scale_features)``.
        transformer_decoder: maps them to the prediction dict (see
            :class:`ClusteringTransformerDecoder`).
    """

    def __init__(
        self, backbone: nn.Module, pixel_decoder: nn.Module, transformer_decoder: nn.Module
    ):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder

    def predict(self, images: Tensor, return_cluster_ids: bool = False) -> Dict[str, Any]:
        """``images``: ``(B, 3, H, W)`` normalised, ``H, W`` multiples of 32 -> decoder outputs
        (``pred_logits`` ``(B, Q, K + 1)``, ``pred_masks`` ``(B, Q, H / 4, W / 4)``,
        ``pred_boxes`` ``(B, Q, 4)``, ... as the decoder predicts them).

        ``return_cluster_ids`` (a ClusterFormer backbone only) adds ``"backbone_cluster_ids"``:
        ``{stage: StageClusterIds}``, the hard clusters of each backbone stage's last block, ids
        ``(B, heads, H / s, W / s)`` int64 (see
        :meth:`~clusterformer.modeling.backbone.ClusterFormerBackbone.forward`)."""
        if return_cluster_ids:
            features, cluster_ids = self.backbone(images, return_cluster_ids=True)
        else:
            features = self.backbone(images)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        outputs = self.transformer_decoder(multi_scale_features, mask_features)
        if return_cluster_ids:
            outputs["backbone_cluster_ids"] = cluster_ids
        return outputs

    def forward(self, images: Tensor) -> Dict[str, Any]:
        return self.predict(images)


def build_clusterformer_segmenter(
    num_classes: int,
    *,
    backbone: str = "tiny",
    backbone_kwargs: Optional[Dict[str, Any]] = None,
    pixel_decoder_kwargs: Optional[Dict[str, Any]] = None,
    decoder_kwargs: Optional[Dict[str, Any]] = None,
    in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
) -> ClusterFormerSegmenter:
    """A segmenter from a backbone preset (``nano``/``tiny``/``small``) and module keyword args.

    The defaults are the paper's COCO model (256-d pixel decoder with 6 deformable layers,
    100 queries, 9 clustering decoder layers, T = 3). A box-only decoder
    (``decoder_kwargs={"mask_on": False, "box_on": True}``) gets a pixel decoder without mask
    features; pass ``in_features=("res3", "res4", "res5")`` so that no backbone output is unused.
    """
    backbone_module = build_clusterformer_backbone(
        backbone, out_features=list(in_features), **(backbone_kwargs or {})
    )
    mask_on = (decoder_kwargs or {}).get("mask_on", True)
    pixel_kwargs = {
        "conv_dim": 256,
        "mask_dim": 256,
        "mask_features_on": mask_on,
        **(pixel_decoder_kwargs or {}),
    }
    pixel_decoder = MSDeformAttnPixelDecoder(
        backbone_module.out_feature_channels, backbone_module.out_feature_strides, **pixel_kwargs
    )
    decoder = ClusteringTransformerDecoder(
        pixel_kwargs["conv_dim"],
        num_classes,
        mask_dim=pixel_kwargs["mask_dim"],
        **(decoder_kwargs or {}),
    )
    return ClusterFormerSegmenter(backbone_module, pixel_decoder, decoder)
