"""Detectron2 layer of the backbone: ``D2ClusterFormer`` in ``BACKBONE_REGISTRY``.

Select it with ``MODEL.BACKBONE.NAME: "D2ClusterFormer"``; its architecture comes from
``MODEL.CLUSTERFORMER_BACKBONE.*`` (see ``add_backbone_config`` in clusterformer/d2/config.py).

Input convention (as Mask2Former's ``D2SwinTransformer``): the meta-architecture normalises the
images with ``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD`` and pads them to ``size_divisibility`` (32);
the backbone receives normalised images in the channel order of ``INPUT.FORMAT``. The project's
ImageNet models are trained on RGB (ImageNet mean [123.675, 116.28, 103.53], std [58.395, 57.12,
57.375]), so dense-task configs should use ``INPUT.FORMAT: "RGB"`` with those statistics.
"""

import logging
from typing import Any, Dict

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..modeling.backbone.clusterformer import ClusterFormerBackbone

logger = logging.getLogger(__name__)


@BACKBONE_REGISTRY.register()
class D2ClusterFormer(ClusterFormerBackbone, Backbone):
    """:class:`ClusterFormerBackbone` as a Detectron2 ``Backbone``.

    Built by ``build_backbone(cfg)`` (arguments ``cfg, input_shape``) or from the explicit keyword
    arguments of :class:`ClusterFormerBackbone`. ``forward(images)`` returns
    ``{name: (B, C, ceil(H / stride), ceil(W / stride))}`` for ``MODEL.CLUSTERFORMER_BACKBONE.OUT_FEATURES``.
    """

    @configurable
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> Dict[str, Any]:
        c = cfg.MODEL.CLUSTERFORMER_BACKBONE
        if cfg.INPUT.FORMAT != "RGB":
            logger.warning(
                "D2ClusterFormer: INPUT.FORMAT is %r; the project's pretrained ClusterFormer "
                "models expect normalised RGB images (INPUT.FORMAT: 'RGB').",
                cfg.INPUT.FORMAT,
            )
        layer_scale = c.LAYER_SCALE_INIT
        return {
            "embed_dims": list(c.EMBED_DIMS),
            "depths": list(c.DEPTHS),
            "mlp_ratios": list(c.MLP_RATIOS),
            "head_dim": c.HEAD_DIM,
            "window_size": c.WINDOW_SIZE,
            "centres_per_window": c.CENTRES_PER_WINDOW,
            "iterations": c.CLUSTERING_ITERATIONS,
            "temperature": c.TEMPERATURE,
            "mstep_normalization": c.MSTEP_NORMALIZATION,
            "assignment_softmax": c.ASSIGNMENT_SOFTMAX,
            "dispatch": c.DISPATCH,
            "layer_scale_init": None if layer_scale is None or layer_scale <= 0 else layer_scale,
            "drop_path_rate": c.DROP_PATH_RATE,
            "out_features": list(c.OUT_FEATURES),
            "in_channels": input_shape.channels if input_shape.channels is not None else 3,
            "downsample_kernel_size": c.DOWNSAMPLE_KERNEL_SIZE,
            "mixer": c.MIXER,
        }

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32
