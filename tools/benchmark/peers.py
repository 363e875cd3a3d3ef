"""The peers' models as ``image -> output`` modules, random init: Hugging Face transformers'
Mask2Former (Swin-T) and EoMT (ViT-S / ViT-B) panoptic models, timm's Swin and ConvNeXt
backbones."""

from __future__ import annotations

from typing import Tuple

from torch import Tensor, nn

COCO_PANOPTIC_CLASSES = 133


class HFMask2Former(nn.Module):
    """``Mask2FormerForUniversalSegmentation(pixel_values=x)`` as ``x -> output``."""

    def __init__(self, image_size: Tuple[int, int], num_classes: int = COCO_PANOPTIC_CLASSES):
        super().__init__()
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

        swin = SwinConfig(
            image_size=list(image_size),
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        # decoder_layers counts Mask2Former's prediction on the initial queries: 10 -> 9 layers.
        config = Mask2FormerConfig(
            backbone_config=swin,
            num_queries=100,
            decoder_layers=10,
            encoder_layers=6,
            num_labels=num_classes,
        )
        self.model = Mask2FormerForUniversalSegmentation(config)

    def forward(self, pixel_values: Tensor):
        return self.model(pixel_values=pixel_values)


class HFEoMT(nn.Module):
    """``EomtForUniversalSegmentation(pixel_values=x)`` as ``x -> output``: EoMT's COCO panoptic
    setting (patch 16, 4 registers, 200 queries joining for the last 4 blocks, 2 upscale blocks)
    on a ViT-S or ViT-B encoder, random init. EoMT takes square inputs only (its query-mask
    grid is ``image_size / patch_size`` on both sides)."""

    ENCODERS = {
        "ViT-S": {"hidden_size": 384, "num_attention_heads": 6, "num_hidden_layers": 12},
        "ViT-B": {"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12},
    }

    def __init__(self, encoder: str, image_size: int, num_classes: int = COCO_PANOPTIC_CLASSES):
        super().__init__()
        from transformers import EomtConfig, EomtForUniversalSegmentation

        config = EomtConfig(
            image_size=image_size,
            patch_size=16,
            num_queries=200,
            num_blocks=4,
            num_labels=num_classes,
            **self.ENCODERS[encoder],
        )
        self.model = EomtForUniversalSegmentation(config)

    def forward(self, pixel_values: Tensor):
        return self.model(pixel_values=pixel_values)


def timm_backbone(name: str, height: int, width: int) -> nn.Module:
    import timm

    kwargs = {"img_size": (height, width)} if name.startswith("swin") else {}
    return timm.create_model(name, pretrained=False, features_only=True, **kwargs)


PEER_BACKBONES = {
    "tiny": (("Swin-T", "swin_tiny_patch4_window7_224"), ("ConvNeXt-T", "convnext_tiny")),
    "small": (("Swin-S", "swin_small_patch4_window7_224"), ("ConvNeXt-S", "convnext_small")),
}
