"""Clustering cross-attention and the transformer decoder: math vs. naive code, masking rule,
shapes, gradients, mixed precision."""

import pytest
import torch
import torch.nn.functional as F

from clusterformer.modeling.clustering import e_step
from clusterformer.modeling.transformer_decoder import (
    ClusteringCrossAttention,
    ClusteringTransformerDecoder,
    MaskedCrossAttention,
    mask_assignment_restriction,
    release_empty_restrictions,
)
from clusterformer.modeling.transformer_decoder.prediction_heads import mask_box_crops

C, HEADS, Q = 32, 4, 6


def _naive_clustering_layer(layer, queries, pixels, query_pos, pixel_pos, allowed):
    """Per-image, per-head, per-pixel loops over the definitions (post-norm)."""
    B, N = queries.shape[0], pixels.shape[1]
    d = C // HEADS
    out = []
    for b in range(B):
        centres = queries[b]
        keys = layer.k_proj(pixels[b] + pixel_pos[b])
        values = layer.v_proj(pixels[b])
        for _ in range(layer.iterations):
            proj = layer.q_proj(centres + query_pos[b])
            heads = []
            for m in range(HEADS):
                sl = slice(m * d, (m + 1) * d)
                logits = proj[:, sl] @ keys[:, sl].T / d**0.5  # (Q, N)
                assign = torch.zeros(Q, N)
                for n in range(N):
                    ok = allowed[b, :, n]
                    if ok.any():
                        assign[ok, n] = logits[ok, n].softmax(0)
                mass = assign.sum(1, keepdim=True)
                heads.append(assign @ values[:, sl] / mass.clamp_min(1e-6))
            centres = layer.norm(centres + layer.out_proj(torch.cat(heads, dim=1)))
        out.append(centres)
    return torch.stack(out)


def _inputs(B=2, N=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    queries, pixels = torch.randn(B, Q, C, generator=g), torch.randn(B, N, C, generator=g)
    query_pos, pixel_pos = torch.randn(B, Q, C, generator=g), torch.randn(B, N, C, generator=g)
    allowed = torch.rand(B, Q, N, generator=g) > 0.5
    allowed[0, :, 3] = False  # a pixel excluded by every query
    allowed[1, 2] = False  # a query that excludes every pixel (zero update)
    return queries, pixels, query_pos, pixel_pos, allowed


def test_clustering_layer_matches_naive_loops():
    layer = ClusteringCrossAttention(C, HEADS, iterations=3)
    queries, pixels, query_pos, pixel_pos, allowed = _inputs()
    out, weights = layer(queries, pixels, query_pos, pixel_pos, allowed, return_weights=True)
    expected = _naive_clustering_layer(layer, queries, pixels, query_pos, pixel_pos, allowed)
    assert torch.allclose(out, expected, atol=1e-5)
    assert weights.shape == (2, Q, 15) and weights.dtype == torch.float32


def test_masked_attention_weights_and_fused_paths_agree():
    layer = MaskedCrossAttention(C, HEADS)
    queries, pixels, query_pos, pixel_pos, allowed = _inputs()
    allowed = release_empty_restrictions(allowed)
    fused, none = layer(queries, pixels, query_pos, pixel_pos, allowed)
    explicit, weights = layer(queries, pixels, query_pos, pixel_pos, allowed, return_weights=True)
    assert none is None
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, Q), atol=1e-5)
    assert (weights[~allowed] == 0).all()


def test_release_empty_restrictions():
    allowed = torch.tensor([[[True, False], [False, False]]])
    assert torch.equal(
        release_empty_restrictions(allowed), torch.tensor([[[True, False], [True, True]]])
    )
    logits = torch.full((1, 2, 4, 4), -3.0)
    logits[0, 0, :2] = 3.0
    restriction = mask_assignment_restriction(logits, (2, 2))
    assert torch.equal(restriction, torch.tensor([[[True, True, False, False], [False] * 4]]))


def test_clustering_under_bfloat16_autocast_matches_fp32():
    layer = ClusteringCrossAttention(C, HEADS, iterations=3)
    queries, pixels, query_pos, pixel_pos, allowed = _inputs()
    ref_out, ref_w = layer(queries, pixels, query_pos, pixel_pos, allowed, return_weights=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = layer(queries, pixels, query_pos, pixel_pos, allowed, return_weights=True)
        q = torch.randn(2, HEADS, Q, 8).bfloat16()
        keys_t = torch.randn(2, HEADS, 8, 15).bfloat16()
        assert e_step(q, keys_t, 0.3, "clusters", ~allowed[:, None]).dtype == torch.float32
    assert weights.dtype == torch.float32
    assert torch.allclose(weights, ref_w, atol=3e-2)
    assert torch.allclose(out.float(), ref_out, atol=6e-2)
    assert (weights[~allowed] == 0).all()


def _decoder(mode="clustering", **kwargs):
    args = {
        "hidden_dim": C,
        "num_queries": Q,
        "nheads": HEADS,
        "dim_feedforward": 48,
        "dec_layers": 4,
        "mask_dim": 24,
    }
    args.update(kwargs)
    return ClusteringTransformerDecoder(C, 5, cross_attention=mode, **args)


def _features(B=2, sizes=((3, 5), (5, 9), (9, 17)), mask_size=(18, 33)):
    return [torch.randn(B, C, h, w) for h, w in sizes], torch.randn(B, 24, *mask_size)


@pytest.mark.parametrize("pre_norm", [False, True])
@pytest.mark.parametrize("mode", ["clustering", "masked_attention"])
def test_decoder_output_shapes(mode, pre_norm):
    decoder = _decoder(mode, pre_norm=pre_norm)
    feats, mask_features = _features()
    out = decoder(feats, mask_features)
    assert out["pred_logits"].shape == (2, Q, 6)
    assert out["pred_masks"].shape == (2, Q, 18, 33)
    assert len(out["aux_outputs"]) == 4
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, Q, 6) and aux["pred_masks"].shape == (2, Q, 18, 33)
    key = "pixel_assignment" if mode == "clustering" else "cross_attention_weights"
    other = "cross_attention_weights" if mode == "clustering" else "pixel_assignment"
    # 4 layers over 3 levels: the last layer (index 3) visits level 0 (lowest resolution).
    assert out[key].shape == (2, Q, 3, 5) and other not in out


@pytest.mark.parametrize("mode", ["clustering", "masked_attention"])
def test_every_decoder_parameter_gets_a_gradient(mode):
    decoder = _decoder(mode, enforce_input_project=True)
    feats, mask_features = _features()
    out = decoder(feats, mask_features)
    loss = out["pred_logits"].square().mean() + out["pred_masks"].sigmoid().mean()
    loss = loss + sum(
        a["pred_logits"].square().mean() + a["pred_masks"].sigmoid().mean()
        for a in out["aux_outputs"]
    )
    loss.backward()
    missing = [
        n for n, p in decoder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert not missing, missing


def test_decoder_assignment_respects_previous_masks():
    decoder = _decoder("clustering", dec_layers=3)
    feats, mask_features = _features()
    out = decoder(feats, mask_features)
    assignment = out["pixel_assignment"]  # last layer = level 2 (highest resolution)
    assert assignment.shape == (2, Q, 9, 17)
    previous = out["aux_outputs"][-1]["pred_masks"]
    allowed = release_empty_restrictions(mask_assignment_restriction(previous, (9, 17))).view(
        2, Q, 9, 17
    )
    assert (~allowed).any(), "the test needs some excluded pixels"
    assert (assignment[~allowed] == 0).all()
    some_query = allowed.any(dim=1)
    assert torch.allclose(assignment.sum(1)[some_query], torch.ones(()), atol=1e-5)
    assert (assignment.sum(1)[~some_query] == 0).all()


def test_decoder_images_are_independent_and_unrestricted_mode_runs():
    decoder = _decoder("clustering").eval()
    feats, mask_features = _features(B=3)
    with torch.no_grad():
        batched = decoder(feats, mask_features)
        single = decoder([f[2:] for f in feats], mask_features[2:])
    assert torch.allclose(batched["pred_masks"][2:], single["pred_masks"], atol=1e-4)
    unrestricted = _decoder("clustering", restrict_to_masks=False)(feats, mask_features)
    assert torch.allclose(unrestricted["pixel_assignment"].sum(1), torch.ones(3, 3, 5), atol=1e-5)


def test_decoder_rejects_bad_inputs():
    decoder = _decoder()
    feats, mask_features = _features()
    with pytest.raises(ValueError, match="feature levels"):
        decoder(feats[:2], mask_features)
    with pytest.raises(ValueError, match="mask_features"):
        decoder(feats, mask_features[:, :8])
    with pytest.raises(ValueError, match="cross_attention"):
        _decoder("kmeans")
    with pytest.raises(ValueError, match="allowed"):
        ClusteringCrossAttention(C, HEADS)(
            torch.randn(1, Q, C),
            torch.randn(1, 4, C),
            allowed=torch.ones(1, Q, 5, dtype=torch.bool),
        )


def test_mask_embedding_is_a_dot_product_with_mask_features():
    decoder = _decoder()
    queries = torch.randn(2, Q, C)
    mask_features = torch.randn(2, 24, 4, 5)
    pred = decoder.prediction_heads(queries, mask_features)
    embed = decoder.prediction_heads.mask_embed(
        F.layer_norm(
            queries, (C,), decoder.prediction_heads.norm.weight, decoder.prediction_heads.norm.bias
        )
    )
    assert torch.allclose(
        pred["pred_masks"][1, 3, 2, 4], embed[1, 3] @ mask_features[1, :, 2, 4], atol=1e-5
    )


def _final_outputs_of_train_and_eval_mode(decoder):
    """Both modes' outputs on the same inputs; their final predictions must agree (dropout 0:
    train and eval compute the same function)."""
    feats, mask_features = _features()
    with torch.no_grad():
        full = decoder.train()(feats, mask_features)
        coarse = decoder.eval()(feats, mask_features)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(coarse[key], full[key], atol=1e-4, rtol=1e-4)
    return full, coarse


@pytest.mark.parametrize("mode", ["clustering", "masked_attention"])
def test_eval_mode_predicts_intermediate_masks_at_level_resolution_only(mode):
    """Eval skips the full-resolution intermediate masks; the outputs stay those of training
    mode (the restrictions come from resized mask features instead of resized mask logits)."""
    full, coarse = _final_outputs_of_train_and_eval_mode(_decoder(mode))
    assert len(coarse["aux_outputs"]) == len(full["aux_outputs"])
    for aux_coarse, aux_full in zip(coarse["aux_outputs"], full["aux_outputs"]):
        assert "pred_masks" not in aux_coarse
        torch.testing.assert_close(aux_coarse["pred_logits"], aux_full["pred_logits"])


def test_semantic_head_predicts_per_pixel_classes_in_training_only():
    decoder = _decoder(semantic_head=True)
    feats, mask_features = _features()
    out = decoder(feats, mask_features)
    head = decoder.semantic_head
    assert out["pred_semantic"].shape == (2, 5, 18, 33)
    expected = torch.einsum("kc,bchw->bkhw", head.weight[:, :, 0, 0], mask_features)
    assert torch.allclose(
        out["pred_semantic"], expected + head.bias[None, :, None, None], atol=1e-5
    )
    out["pred_semantic"].sum().backward()
    assert head.weight.grad.abs().sum() > 0 and mask_features.grad is None
    decoder.eval()
    assert "pred_semantic" not in decoder(feats, mask_features)
    assert _decoder().semantic_head is None
    with pytest.raises(ValueError, match="semantic_head"):
        _decoder(semantic_head=True, mask_on=False, box_on=True)


def test_mask_box_crops_do_not_depend_on_position_or_size():
    # An L shape at two positions and two sizes, and an empty mask.
    logits = torch.full((1, 3, 40, 60), -10.0)
    logits[0, 0, 4:12, 6:14] = 10.0
    logits[0, 0, 4:8, 10:14] = -10.0
    logits[0, 1, 20:36, 30:46] = 10.0
    logits[0, 1, 20:28, 38:46] = -10.0
    crops = mask_box_crops(logits.requires_grad_(), 8)
    assert crops.shape == (1, 3, 8, 8) and not crops.requires_grad
    torch.testing.assert_close(crops[0, 0], crops[0, 1], atol=1e-3, rtol=0)
    # The missing quarter is the top right one.
    assert crops[0, 0, :2, 6:].mean() < 0.1 and crops[0, 0, 6:, :2].mean() > 0.9
    # No pixel above the threshold: the box is the whole canvas.
    expected = F.interpolate(logits[:, 2:].detach().sigmoid(), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(crops[0, 2], expected[0, 0], atol=1e-6, rtol=0)


def test_mask_shape_embedding_starts_neutral_and_leaves_the_masks_alone():
    torch.manual_seed(0)
    plain = _decoder()
    shaped = _decoder(mask_shape_resolution=8)
    missing, unexpected = shaped.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all("mask_shape_embed" in k for k in missing)
    feats, mask_features = _features()
    with torch.no_grad():
        before, after = plain(feats, mask_features), shaped(feats, mask_features)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(after[key], before[key])
    # Trained, the class head reads the mask; the class loss reaches no mask parameter.
    torch.nn.init.normal_(shaped.prediction_heads.mask_shape_embed.mlp.layers[-1].weight)
    out = shaped(feats, mask_features)
    assert not torch.allclose(out["pred_logits"], before["pred_logits"])
    out["pred_logits"].sum().backward()
    mask_embed = shaped.prediction_heads.mask_embed
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in mask_embed.parameters())
    assert shaped.prediction_heads.mask_shape_embed.mlp.layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mask_shape_resolution"):
        _decoder(mask_shape_resolution=8, mask_on=False, box_on=True)


@pytest.mark.parametrize("restrict_to_masks", [True, False])
def test_mask_shape_embedding_in_eval_mode(restrict_to_masks):
    """Eval predicts intermediate masks at level resolution for the shape crops even without
    mask restriction; the final prediction equals training mode's."""
    decoder = _decoder(mask_shape_resolution=8, restrict_to_masks=restrict_to_masks)
    torch.nn.init.normal_(decoder.prediction_heads.mask_shape_embed.mlp.layers[-1].weight)
    _, coarse = _final_outputs_of_train_and_eval_mode(decoder)
    assert all("pred_masks" not in aux for aux in coarse["aux_outputs"])
