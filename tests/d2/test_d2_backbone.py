"""The Detectron2 wrapper of the backbone: built from a cfg, output_shape agrees with forward."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_backbone

import clusterformer.d2  # noqa: F401  (registers D2ClusterFormer)
from clusterformer.d2.backbone import D2ClusterFormer
from clusterformer.d2.config import add_clusterformer_config


def nano_cfg(**backbone_keys):
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "D2ClusterFormer"
    cfg.INPUT.FORMAT = "RGB"
    c = cfg.MODEL.CLUSTERFORMER_BACKBONE
    c.EMBED_DIMS = [32, 64, 128, 256]
    c.DEPTHS = [1, 1, 1, 1]
    c.MLP_RATIOS = [2.0, 2.0, 2.0, 2.0]
    c.HEAD_DIM = 16
    for key, value in backbone_keys.items():
        setattr(c, key, value)
    return cfg


def test_registered():
    assert BACKBONE_REGISTRY.get("D2ClusterFormer") is D2ClusterFormer


@pytest.mark.parametrize("size", [(64, 96), (45, 70)])
def test_output_shape_matches_forward(size):
    backbone = build_backbone(nano_cfg())
    assert isinstance(backbone, Backbone) and backbone.size_divisibility == 32
    shapes = backbone.output_shape()
    assert shapes == {
        "res2": ShapeSpec(channels=32, stride=4),
        "res3": ShapeSpec(channels=64, stride=8),
        "res4": ShapeSpec(channels=128, stride=16),
        "res5": ShapeSpec(channels=256, stride=32),
    }
    out = backbone(torch.randn(2, 3, *size))
    assert set(out) == set(shapes)
    for name, spec in shapes.items():
        H, W = size
        assert out[name].shape == (
            2,
            spec.channels,
            math.ceil(H / spec.stride),
            math.ceil(W / spec.stride),
        )


def test_cfg_keys_reach_the_modules():
    cfg = nano_cfg(
        WINDOW_SIZE=5,
        CENTRES_PER_WINDOW=3,
        CLUSTERING_ITERATIONS=2,
        TEMPERATURE="inv_sqrt_dim",
        MSTEP_NORMALIZATION="sum",
        ASSIGNMENT_SOFTMAX="tokens",
        DISPATCH="hard",
        LAYER_SCALE_INIT=0.1,
        DROP_PATH_RATE=0.3,
        OUT_FEATURES=["res3", "res4"],
    )
    backbone = build_backbone(cfg)
    assert backbone.output_shape() == {
        "res3": ShapeSpec(channels=64, stride=8),
        "res4": ShapeSpec(channels=128, stride=16),
    }
    assert len(backbone.stages) == 3  # res5 not requested: not built
    block = backbone.stages[2].blocks[0]
    mixer = block.mixer
    assert (mixer.window_size, mixer.centres_per_window, mixer.num_heads) == (5, 3, 8)
    c = mixer.clustering
    assert (c.iterations, c.temperature, c.mstep_normalization, c.assignment_softmax) == (
        2,
        "inv_sqrt_dim",
        "sum",
        "tokens",
    )
    assert mixer.dispatch.mode == "hard"
    assert torch.allclose(block.layer_scale_1, torch.full_like(block.layer_scale_1, 0.1))
    assert block.drop_path.drop_prob == pytest.approx(0.3 * 2 / 3)
    out = backbone(torch.randn(1, 3, 64, 64))
    assert set(out) == {"res3", "res4"}


def test_default_cfg_is_tiny():
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    c = cfg.MODEL.CLUSTERFORMER_BACKBONE
    assert list(c.EMBED_DIMS) == [96, 192, 384, 768] and list(c.DEPTHS) == [2, 2, 6, 2]
    assert list(c.MLP_RATIOS) == [8.0, 8.0, 4.0, 4.0] and c.HEAD_DIM == 32


def test_explicit_arguments_and_bgr_warning(caplog):
    backbone = D2ClusterFormer(embed_dims=(32, 64, 128, 256), depths=(1, 1, 1, 1), head_dim=16)
    assert backbone.output_shape()["res5"] == ShapeSpec(channels=256, stride=32)
    cfg = nano_cfg()
    cfg.INPUT.FORMAT = "BGR"
    with caplog.at_level("WARNING"):
        build_backbone(cfg)
    assert "RGB" in caplog.text
