"""What a suite measures: the contenders (ClusterFormer's models and components, and the peers of
:mod:`tools.benchmark.peers`), their inputs, and the groups measured together."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from clusterformer.modeling.backbone import (
    ClusteringMixer,
    build_clusterformer_backbone,
    default_clustering_settings,
)
from clusterformer.modeling.segmenter import build_clusterformer_segmenter
from clusterformer.modeling.transformer_decoder import (
    ClusteringCrossAttention,
    ClusteringTransformerDecoder,
)
from clusterformer.modeling.transformer_decoder.cross_attention import (
    release_empty_restrictions,
)
from tools.benchmark.peers import (
    COCO_PANOPTIC_CLASSES,
    PEER_BACKBONES,
    HFEoMT,
    HFMask2Former,
    timm_backbone,
)


@dataclass
class Contender:
    """A model of a suite: ``build()`` returns the module, ``inputs(batch, device)`` its inputs.

    ``family`` is "clusterformer" or "peer"; ratios compare each ClusterFormer contender with
    the peers of the same ``size_class``.
    """

    name: str
    family: str
    size_class: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, str], Tuple[Tensor, ...]]


class MainOutputs(nn.Module):
    """A model returning only its main prediction tensors (for fvcore's tracer, which needs
    tensors out): ``keys`` of its output dict, or every feature map of a dict/list output."""

    def __init__(self, model: nn.Module, keys: Optional[Sequence[str]] = None):
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        out = self.model(*inputs)
        if self.keys is not None:
            return tuple(out[k] for k in self.keys)
        return tuple(out.values()) if isinstance(out, dict) else tuple(out)


def _paper_mixer(dim: int) -> ClusteringMixer:
    """A mixer of the tiny backbone: 32-channel heads, the paper's clustering settings."""
    return ClusteringMixer(dim, num_heads=dim // 32, head_dim=32, **default_clustering_settings())


def image_inputs(height: int, width: int) -> Callable[[int, str], Tuple[Tensor, ...]]:
    def make(batch: int, device: str) -> Tuple[Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(batch, 3, height, width, generator=generator).to(device),)

    return make


def backbone_contenders(
    size_classes: Sequence[str], height: int, width: int, peers: bool = True
) -> List[Contender]:
    inputs = image_inputs(height, width)
    contenders = []
    for size_class in size_classes:
        contenders.append(
            Contender(
                f"ClusterFormer-{size_class[0].upper()}",
                "clusterformer",
                size_class,
                lambda s=size_class: build_clusterformer_backbone(s),
                inputs,
            )
        )
        for label, timm_name in PEER_BACKBONES[size_class] if peers else ():
            contenders.append(
                Contender(
                    label,
                    "peer",
                    size_class,
                    lambda n=timm_name: timm_backbone(n, height, width),
                    inputs,
                )
            )
    return contenders


def panoptic_contenders(height: int, width: int) -> List[Contender]:
    inputs = image_inputs(height, width)
    return [
        Contender(
            "ClusterFormer-T panoptic",
            "clusterformer",
            "tiny",
            lambda: build_clusterformer_segmenter(COCO_PANOPTIC_CLASSES, backbone="tiny"),
            inputs,
        ),
        Contender(
            "Mask2Former-Swin-T (transformers)",
            "peer",
            "tiny",
            lambda: HFMask2Former((height, width)),
            inputs,
        ),
    ] + [
        Contender(
            f"EoMT-{encoder} (transformers)",
            "peer",
            "tiny",
            lambda e=encoder: HFEoMT(e, height),
            inputs,
        )
        # EoMT needs square inputs (it pads to them); at other sizes it is left out.
        for encoder in (HFEoMT.ENCODERS if height == width else ())
    ]


def main_output_keys(model: nn.Module) -> Optional[Sequence[str]]:
    """The prediction tensors of a model's output dict (``None``: all its feature maps)."""
    if isinstance(model, (HFMask2Former, HFEoMT)):
        return ("class_queries_logits", "masks_queries_logits")
    if type(model).__name__ == "ClusterFormerSegmenter":
        return ("pred_logits", "pred_masks")
    if isinstance(model, ClusteringTransformerDecoder):
        return ("pred_logits", "pred_masks")
    return None


class _CrossAttentionQueries(nn.Module):
    """The decoder cross-attention as ``(queries, pixels, query_pos, pixel_pos, allowed) ->
    queries``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.layer(*inputs)[0]


def component_contenders(image_size: int) -> List[Contender]:
    """The hot spots at the shapes they have inside ClusterFormer-T for an ``image_size``
    square input: stage-1 and stage-3 mixers, one decoder cross-attention on the stride-8
    level with a mask restriction, and the 9-layer decoder."""
    s = image_size

    def feature_map(channels: int, stride: int) -> Callable[[int, str], Tuple[Tensor, ...]]:
        def make(batch: int, device: str) -> Tuple[Tensor, ...]:
            g = torch.Generator().manual_seed(0)
            size = math.ceil(s / stride)
            x = torch.randn(batch, channels, size, size, generator=g).to(device)
            # channels_last, as the backbone hands its maps to the mixers.
            return (x.contiguous(memory_format=torch.channels_last),)

        return make

    def cross_attention_inputs(batch: int, device: str) -> Tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        n = math.ceil(s / 8) ** 2
        queries = torch.randn(batch, 100, 256, generator=g)
        pixels = torch.randn(batch, n, 256, generator=g)
        query_pos = torch.randn(batch, 100, 256, generator=g)
        pixel_pos = torch.randn(batch, n, 256, generator=g)
        # A trained decoder's masks cover a fraction of the image: about 30% here.
        allowed = release_empty_restrictions(torch.rand(batch, 100, n, generator=g) < 0.3)
        return tuple(t.to(device) for t in (queries, pixels, query_pos, pixel_pos, allowed))

    def decoder_inputs(batch: int, device: str) -> Tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        levels = [
            torch.randn(batch, 256, math.ceil(s / st), math.ceil(s / st), generator=g)
            for st in (32, 16, 8)
        ]
        mask_features = torch.randn(batch, 256, math.ceil(s / 4), math.ceil(s / 4), generator=g)
        return tuple(t.to(device) for t in (*levels, mask_features))

    class DecoderFromTensors(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = ClusteringTransformerDecoder(256, COCO_PANOPTIC_CLASSES, mask_dim=256)

        def forward(self, *inputs: Tensor) -> Dict[str, Any]:
            return self.decoder(list(inputs[:3]), inputs[3])

    return [
        Contender(
            "backbone mixer, stage 1 (96 ch, 3 heads)",
            "clusterformer",
            "tiny",
            lambda: _paper_mixer(96),
            feature_map(96, 4),
        ),
        Contender(
            "backbone mixer, stage 3 (384 ch, 12 heads)",
            "clusterformer",
            "tiny",
            lambda: _paper_mixer(384),
            feature_map(384, 16),
        ),
        Contender(
            "decoder clustering cross-attention (stride 8, T = 3)",
            "clusterformer",
            "tiny",
            lambda: _CrossAttentionQueries(ClusteringCrossAttention(256, 8, 3)),
            cross_attention_inputs,
        ),
        Contender(
            "transformer decoder (9 layers, 100 queries)",
            "clusterformer",
            "tiny",
            DecoderFromTensors,
            decoder_inputs,
        ),
    ]


@dataclass
class Group:
    """Contenders measured together: one suite, one input size, batch and mode."""

    suite: str
    contenders: List[Contender]
    size: Tuple[int, int]
    batch: int
    mode: str
    optimize: bool = True  # train mode: AdamW step after backward


def contenders_of(suite: str, size: Tuple[int, int], size_classes: Sequence[str]):
    h, w = size
    if suite == "backbones":
        return backbone_contenders(size_classes, h, w)
    if suite == "scaling":
        return backbone_contenders(["tiny"], h, w)
    if suite == "panoptic":
        return panoptic_contenders(h, w)
    if suite == "components":
        return component_contenders(h)
    raise ValueError(f"no contenders for suite {suite!r}")
