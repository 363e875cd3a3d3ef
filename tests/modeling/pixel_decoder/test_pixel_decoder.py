"""MSDeformAttnPixelDecoder: shapes for odd sizes, gradients, batch independence, wiring."""

import pytest
import torch

from clusterformer.modeling.pixel_decoder import (
    DeformableTransformerEncoder,
    MSDeformAttnPixelDecoder,
)
from clusterformer.modeling.transformer_decoder import PositionEmbeddingSine

CHANNELS = {"res2": 16, "res3": 24, "res4": 40, "res5": 48}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _features(B, H, W):
    # Backbones pad/convolve with ceil division: odd input sizes give odd, non-nested feature sizes.
    return {
        k: torch.randn(B, c, -(-H // STRIDES[k]), -(-W // STRIDES[k])) for k, c in CHANNELS.items()
    }


def _decoder(**kwargs):
    args = {"conv_dim": 32, "mask_dim": 24, "num_layers": 2, "n_heads": 4, "n_points": 2}
    args["dim_feedforward"] = 48
    args.update(kwargs)
    return MSDeformAttnPixelDecoder(CHANNELS, STRIDES, **args)


@pytest.mark.parametrize("size", [(64, 96), (70, 90), (33, 47)])
def test_output_shapes_for_odd_sizes(size):
    H, W = size
    feats = _features(2, H, W)
    mask_features, multi_scale = _decoder()(feats)
    assert mask_features.shape == (2, 24, *feats["res2"].shape[-2:])
    assert [tuple(x.shape) for x in multi_scale] == [
        (2, 32, *feats["res5"].shape[-2:]),
        (2, 32, *feats["res4"].shape[-2:]),
        (2, 32, *feats["res3"].shape[-2:]),
    ]


def test_every_parameter_gets_a_gradient():
    decoder = _decoder()
    # Deformable DETR zero-initialises the offset/weight projections, so at initialisation the
    # query (hence the level embedding) gets an exactly zero gradient; perturb them first.
    with torch.no_grad():
        for layer in decoder.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(std=0.01)
            layer.self_attn.attention_weights.weight.normal_(std=0.01)
    mask_features, multi_scale = decoder(_features(2, 45, 61))
    (mask_features.square().mean() + sum(x.square().mean() for x in multi_scale)).backward()
    missing = [
        n for n, p in decoder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert not missing, missing


def test_images_of_a_batch_are_independent():
    decoder = _decoder().eval()
    feats = _features(3, 40, 56)
    with torch.no_grad():
        batched = decoder(feats)
        single = decoder({k: v[1:2] for k, v in feats.items()})
    assert torch.allclose(batched[0][1:2], single[0], atol=1e-5)
    for a, b in zip(batched[1], single[1]):
        assert torch.allclose(a[1:2], b, atol=1e-5)


def test_encoder_flatten_and_split_round_trip():
    encoder = DeformableTransformerEncoder(d_model=32, n_heads=4, num_layers=0, n_levels=3)
    srcs = [torch.randn(2, 32, h, w) for h, w in [(2, 3), (3, 5), (5, 9)]]
    out = encoder(srcs, [torch.zeros_like(s) for s in srcs])
    assert all(torch.equal(a, b) for a, b in zip(out, srcs))
    reference = DeformableTransformerEncoder.reference_points([(2, 3), (1, 1)], torch.device("cpu"))
    assert reference.shape == (1, 7, 2, 2)
    assert torch.allclose(reference[0, 5, 0], torch.tensor([2.5 / 3, 1.5 / 2]))
    assert torch.allclose(reference[0, 6, 1], torch.tensor([0.5, 0.5]))


def test_mask_features_follow_common_stride():
    decoder = _decoder(common_stride=8, in_features=["res3", "res4", "res5"])
    feats = _features(1, 64, 64)
    mask_features, _ = decoder(feats)
    assert mask_features.shape[-2:] == feats["res3"].shape[-2:]
    assert len(decoder.lateral_convs) == 0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="res6"):
        MSDeformAttnPixelDecoder(
            CHANNELS, STRIDES, transformer_in_features=["res4", "res5", "res6"]
        )
    with pytest.raises(ValueError, match="divisible by 32"):
        _decoder(conv_dim=48)
    with pytest.raises(KeyError, match="res2"):
        _decoder()({k: v for k, v in _features(1, 64, 64).items() if k != "res2"})


def test_sine_position_embedding_values():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    pos = pe(torch.zeros(2, 1, 2, 3))
    assert pos.shape == (2, 8, 2, 3)
    # Channel 0 is sin(2*pi*y/H) (frequency 1), channel 4 is sin(2*pi*x/W).
    y = torch.tensor([1.0, 2.0]) / 2 * 2 * torch.pi
    x = torch.tensor([1.0, 2.0, 3.0]) / 3 * 2 * torch.pi
    assert torch.allclose(pos[0, 0, :, 0], y.sin(), atol=1e-5)
    assert torch.allclose(pos[0, 1, :, 0], y.cos(), atol=1e-5)
    assert torch.allclose(pos[1, 4, 0, :], x.sin(), atol=1e-5)
    # Channel 2 has frequency 1 / 10000^(2/4).
    assert torch.allclose(pos[0, 6, 0, :], (x / 100).sin(), atol=1e-5)
    padded = torch.zeros(1, 2, 3, dtype=torch.bool)
    padded[:, :, 2] = True
    assert torch.allclose(
        pe(torch.zeros(1, 1, 2, 3), padded)[0, 4, 0, :2],
        torch.tensor([1.0, 2.0]).div(2).mul(2 * torch.pi).sin(),
        atol=1e-5,
    )
