"""The cross-attentions' projection initialisation (``projection_init``): one Xavier draw per
projection, or Mask2Former's single draw over the packed (3C, C) query / key / value matrix."""

from __future__ import annotations

import math

import pytest
import torch

from clusterformer.modeling.transformer_decoder import ClusteringTransformerDecoder
from clusterformer.modeling.transformer_decoder.cross_attention import (
    ClusteringCrossAttention,
    MaskedCrossAttention,
)

C = 96
LAYERS = [ClusteringCrossAttention, MaskedCrossAttention]


def xavier_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


def qkv(layer) -> torch.Tensor:
    return torch.stack([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])


@pytest.mark.parametrize("layer_type", LAYERS)
def test_packed_draws_query_key_value_as_one_3c_by_c_matrix(layer_type):
    torch.manual_seed(0)
    separate = layer_type(C, 4)
    packed = layer_type(C, 4, projection_init="packed")
    packed_bound, separate_bound = xavier_bound(C, 3 * C), xavier_bound(C, C)
    # Uniform(-b, b) has std b / sqrt(3); 3 * 96 * 96 samples pin it to about 1 %.
    assert qkv(packed).abs().max() <= packed_bound
    assert qkv(packed).std().item() == pytest.approx(packed_bound / math.sqrt(3), rel=0.03)
    assert qkv(separate).abs().max() > packed_bound
    assert qkv(separate).std().item() == pytest.approx(separate_bound / math.sqrt(3), rel=0.03)
    # The output projection is drawn alone either way; every bias starts at zero.
    for layer in (separate, packed):
        assert layer.out_proj.weight.abs().max() <= separate_bound
        assert layer.out_proj.weight.std().item() > 0.9 * separate_bound / math.sqrt(3)
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
            assert torch.count_nonzero(proj.bias) == 0


def test_packed_is_one_xavier_draw_over_the_stacked_matrix():
    """As Mask2Former's CrossAttentionLayer._reset_parameters on nn.MultiheadAttention's (3C, C)
    in_proj_weight: one xavier_uniform_ over the stacked matrix, split into q, k and v."""
    torch.manual_seed(3)
    layer = MaskedCrossAttention(C, 4, projection_init="packed")
    torch.manual_seed(3)
    for _ in range(4):  # the constructor's four nn.Linear draw their default weights first
        torch.nn.Linear(C, C)
    expected = torch.nn.init.xavier_uniform_(torch.empty(3 * C, C))
    assert torch.equal(qkv(layer).reshape(3 * C, C), expected)


def test_the_decoder_passes_its_init_to_every_cross_attention():
    torch.manual_seed(0)
    decoder = ClusteringTransformerDecoder(
        C, 3, hidden_dim=C, num_queries=4, nheads=4, dim_feedforward=32, dec_layers=2,
        mask_dim=C, cross_attention_init="packed",
    )  # fmt: skip
    for layer in decoder.cross_attention_layers:
        assert qkv(layer).abs().max() <= xavier_bound(C, 3 * C)


@pytest.mark.parametrize("layer_type", LAYERS)
def test_an_unknown_init_is_refused_naming_the_argument(layer_type):
    with pytest.raises(ValueError, match="projection_init must be one of"):
        layer_type(C, 4, projection_init="orthogonal")
