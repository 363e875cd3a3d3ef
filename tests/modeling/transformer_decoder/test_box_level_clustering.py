"""Box-level clustering: the box restriction, its use in the E-step, box refinement, the
box-carrying decoder (shapes, gradients) and the box-only pixel decoder."""

import pytest
import torch

from clusterformer.modeling.box_ops import box_cxcywh_to_xyxy, inverse_sigmoid
from clusterformer.modeling.clustering import e_step
from clusterformer.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from clusterformer.modeling.transformer_decoder import (
    ClusteringTransformerDecoder,
    box_assignment_restriction,
    mask_assignment_restriction,
    refine_boxes,
    release_empty_restrictions,
    restrict_within,
)

C, HEADS, Q, K = 32, 4, 7, 5
# Three non-square levels, lowest resolution first, as a 72 x 136 padded input gives them.
LEVELS = ((3, 5), (5, 9), (9, 17))


def _naive_box_restriction(boxes, size):
    """Per-token loops: the token's cell overlaps the box with positive area."""
    h, w = size
    B, Qn, _ = boxes.shape
    out = torch.zeros(B, Qn, h * w, dtype=torch.bool)
    for b in range(B):
        for q in range(Qn):
            x0, y0, x1, y1 = box_cxcywh_to_xyxy(boxes[b, q]).tolist()
            for i in range(h):
                for j in range(w):
                    overlap_x = min(x1, (j + 1) / w) - max(x0, j / w)
                    overlap_y = min(y1, (i + 1) / h) - max(y0, i / h)
                    out[b, q, i * w + j] = overlap_x > 0 and overlap_y > 0
    return out


def _border_boxes():
    """Boxes touching each border, a corner box, a sub-cell box, one crossing the canvas.

    Edges are dyadic fractions, exact in fp32, so that a box edge on a cell boundary (``x = 0.5``
    with 4 columns) really is on it in both the implementation and the float64 loops.
    """
    xyxy = torch.tensor(
        [
            [0.0, 0.0, 0.3125, 0.375],  # top-left corner
            [0.625, 0.25, 1.0, 0.5],  # right border
            [0.125, 0.75, 0.5, 1.0],  # bottom border
            [0.0, 0.0, 1.0, 1.0],  # the whole canvas
            [0.40625, 0.515625, 0.4375, 0.53125],  # smaller than a cell of every level
            [-0.25, 0.3125, 0.25, 1.25],  # partly outside the canvas
            [0.5, 0.5, 0.75, 0.75],  # edges on cell boundaries of even-sized levels
        ]
    )
    cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], -1)
    return cxcywh[None]


@pytest.mark.parametrize("size", LEVELS + ((1, 1), (4, 4), (2, 7)))
def test_box_restriction_matches_cell_overlap_loops(size):
    g = torch.Generator().manual_seed(size[0] * 10 + size[1])
    random = torch.cat([torch.rand(2, 6, 2, generator=g), torch.rand(2, 6, 2, generator=g)], -1)
    boxes = torch.cat([random, _border_boxes().expand(2, -1, -1)], dim=1)
    allowed = box_assignment_restriction(boxes, size)
    assert allowed.shape == (2, 13, size[0] * size[1]) and allowed.dtype == torch.bool
    assert torch.equal(allowed, _naive_box_restriction(boxes, size))
    # Sigmoid-like boxes (centre in (0, 1), positive size) never come out empty.
    assert allowed.any(-1).all()


def test_box_restriction_hand_values():
    # A 2 x 4 level; box x in [0.3, 0.6], y in [0, 0.5]: columns 1, 2 of row 0.
    boxes = torch.tensor([[[0.45, 0.25, 0.3, 0.5]]])
    expected = torch.tensor([[[False, True, True, False, False, False, False, False]]])
    assert torch.equal(box_assignment_restriction(boxes, (2, 4)), expected)
    # Touching a cell boundary is not overlapping it: x in [0.25, 0.5] is column 1 only.
    boxes = torch.tensor([[[0.375, 0.25, 0.25, 0.5]]])
    assert box_assignment_restriction(boxes, (2, 4))[0, 0, :4].tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="cxcywh"):
        box_assignment_restriction(torch.rand(2, 4), (2, 4))


def test_restrict_within_falls_back_to_the_outer_restriction():
    outer = torch.tensor([[[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]], dtype=torch.bool)
    inner = torch.tensor([[[0, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 0]]], dtype=torch.bool)
    combined = restrict_within(outer, inner)
    assert combined.tolist() == [[[0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]]
    assert release_empty_restrictions(combined)[0, 2].all()


@pytest.mark.parametrize("size", LEVELS)
def test_e_step_gives_no_mass_outside_a_query_box(size):
    g = torch.Generator().manual_seed(size[1])
    boxes = torch.cat([_border_boxes(), torch.rand(1, 3, 4, generator=g) * 0.6 + 0.2], 1)
    boxes = boxes.expand(2, -1, -1)
    allowed = release_empty_restrictions(box_assignment_restriction(boxes, size))
    n = size[0] * size[1]
    centres = torch.randn(2, HEADS, boxes.shape[1], 8, generator=g)
    keys = torch.randn(2, HEADS, n, 8, generator=g)
    # The decoder's E-step under a restriction: pairs it excludes, pixels no query takes dropped.
    assignment = e_step(
        centres,
        keys.transpose(-2, -1),
        0.35,
        "clusters",
        ~allowed[:, None],
        allowed.any(1)[:, None, None],
    )
    outside = ~box_assignment_restriction(boxes, size)[:, None].expand_as(assignment)
    assert outside.any() and (assignment[outside] == 0).all()
    # Every token some box covers still distributes one unit of mass.
    covered = allowed.any(1)[:, None].expand(-1, HEADS, -1)
    assert torch.allclose(assignment.sum(2)[covered], torch.ones(()), atol=1e-6)


def _decoder(mask_on=False, **kwargs):
    args = {
        "hidden_dim": C,
        "num_queries": Q,
        "nheads": HEADS,
        "dim_feedforward": 48,
        "dec_layers": 4,
        "mask_dim": 24,
        "mask_on": mask_on,
        "box_on": True,
    }
    args.update(kwargs)
    return ClusteringTransformerDecoder(C, K, **args)


def _features(B=2, mask_size=(18, 34)):
    return [torch.randn(B, C, h, w) for h, w in LEVELS], torch.randn(B, 24, *mask_size)


def _randomise_box_head(decoder):
    """The box head starts at zero deltas; give it some, so that boxes move between layers."""
    torch.manual_seed(1)
    with torch.no_grad():
        decoder.prediction_heads.box_embed.layers[-1].weight.normal_(std=0.5)


@pytest.mark.parametrize("dec_layers", [1, 2, 3, 5])
@pytest.mark.parametrize("mask_on", [False, True])
def test_decoder_assignment_stays_inside_the_previous_boxes(dec_layers, mask_on):
    """The last layer's E-step (at level (L - 1) mod 3) gives a query no token outside the box
    of the prediction before it; with masks also none outside its mask, unless released."""
    decoder = _decoder(mask_on=mask_on, dec_layers=dec_layers)
    with torch.no_grad():
        # Anchors touching the borders and the corner, so that the first layer sees them too.
        decoder.anchor_boxes.weight[: Q - 2] = inverse_sigmoid(_border_boxes()[0, : Q - 2])
    _randomise_box_head(decoder)
    feats, mask_features = _features()
    out = decoder(feats, mask_features if mask_on else None)
    size = LEVELS[(dec_layers - 1) % 3]
    assignment = out["pixel_assignment"].flatten(2)  # (B, Q, h * w)
    previous = out["aux_outputs"][-1]
    inside_box = box_assignment_restriction(previous["pred_boxes"], size)
    assert (~inside_box).any(), "the test needs tokens outside some boxes"
    assert (assignment[~inside_box] == 0).all()
    if mask_on:
        in_mask = mask_assignment_restriction(previous["pred_masks"], size)
        allowed = release_empty_restrictions(restrict_within(inside_box, in_mask))
        assert (assignment[~allowed] == 0).all()
    else:
        # Boxes alone: every token inside at least one box is shared out completely.
        covered = inside_box.any(1)
        assert torch.allclose(assignment.sum(1)[covered], torch.ones(()), atol=1e-5)


def test_unrestricted_box_decoder_assigns_every_token():
    decoder = _decoder(restrict_to_boxes=False, dec_layers=3)
    _randomise_box_head(decoder)
    out = decoder(_features()[0])
    assert torch.allclose(out["pixel_assignment"].sum(1), torch.ones(2, 9, 17), atol=1e-5)


@pytest.mark.parametrize("mask_on", [False, True])
@pytest.mark.parametrize("mode", ["clustering", "masked_attention"])
def test_box_decoder_outputs_and_every_parameter_gets_a_gradient(mask_on, mode):
    decoder = _decoder(mask_on=mask_on, cross_attention=mode, enforce_input_project=True)
    _randomise_box_head(decoder)
    feats, mask_features = _features()
    out = decoder(feats, mask_features if mask_on else None)
    predictions = out["aux_outputs"] + [out]
    assert len(predictions) == 5
    for p in predictions:
        assert p["pred_logits"].shape == (2, Q, K + 1)
        assert p["pred_boxes"].shape == (2, Q, 4) and p["pred_boxes"].dtype == torch.float32
        assert ((p["pred_boxes"] > 0) & (p["pred_boxes"] < 1)).all()
        assert ("pred_masks" in p) == mask_on
    loss = sum(p["pred_logits"].square().mean() + p["pred_boxes"].sum() for p in predictions)
    if mask_on:
        loss = loss + sum(p["pred_masks"].sigmoid().mean() for p in predictions)
    loss.backward()
    missing = [
        n for n, p in decoder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert not missing, missing
    if not mask_on:
        assert decoder.prediction_heads.mask_embed is None


def test_boxes_move_between_layers_by_refinement():
    decoder = _decoder(dec_layers=3)
    # At initialisation the deltas are zero: every prediction is the anchor box.
    out = decoder(_features()[0])
    anchors = decoder.anchor_boxes.weight.sigmoid()
    for p in out["aux_outputs"] + [out]:
        assert torch.allclose(p["pred_boxes"], anchors.expand(2, -1, -1), atol=1e-6)
    _randomise_box_head(decoder)
    out = decoder(_features()[0])
    boxes = [p["pred_boxes"] for p in out["aux_outputs"] + [out]]
    assert not torch.allclose(boxes[0], boxes[-1])


def test_refinement_values_and_gradient_paths():
    anchors = torch.randn(1, 3, 4, requires_grad=True)
    deltas = [torch.randn(1, 3, 4, requires_grad=True) for _ in range(3)]
    boxes = {}
    for gradient in ("detach", "look_forward_twice"):
        reference, first, preds = anchors, True, []
        for d in deltas:
            pred, reference = refine_boxes(reference, d, first=first, gradient=gradient)
            preds.append(pred)
            first = False
        boxes[gradient] = preds
        # box_l = sigmoid(inverse_sigmoid(box_{l-1}) + delta_l).
        expected = anchors.sigmoid()
        for pred, d in zip(preds, deltas):
            expected = (inverse_sigmoid(expected) + d).sigmoid()
            assert torch.allclose(pred, expected, atol=1e-4)
    for a, b in zip(boxes["detach"], boxes["look_forward_twice"]):
        assert torch.allclose(a, b, atol=1e-6)

    def grads(pred):
        for t in [anchors] + deltas:
            t.grad = None
        pred.sum().backward(retain_graph=True)
        return [t.grad is not None and t.grad.abs().sum() > 0 for t in [anchors] + deltas]

    # The last box's loss: delta_2 only (detach); delta_2 and delta_1 (look forward twice).
    assert grads(boxes["detach"][2]) == [False, False, False, True]
    assert grads(boxes["look_forward_twice"][2]) == [False, False, True, True]
    # The anchors learn from the first prediction, and from the second with look forward twice.
    assert grads(boxes["detach"][1]) == [False, False, True, False]
    assert grads(boxes["look_forward_twice"][1]) == [True, True, True, False]
    assert grads(boxes["detach"][0]) == [True, True, False, False]
    with pytest.raises(ValueError, match="gradient"):
        refine_boxes(anchors, deltas[0], first=True, gradient="none")


def test_decoder_options_and_errors():
    frozen = _decoder(learn_anchor_boxes=False)
    assert not frozen.anchor_boxes.weight.requires_grad
    focal = _decoder(class_prior_prob=0.01)
    assert torch.allclose(
        focal.prediction_heads.class_embed.bias, torch.tensor(-4.59512), atol=1e-4
    )
    assert _decoder(box_on=False, mask_on=True).anchor_boxes is None
    with pytest.raises(ValueError, match="mask_on"):
        _decoder(box_on=False, mask_on=False)
    with pytest.raises(ValueError, match="box_refinement_gradient"):
        _decoder(box_refinement_gradient="sometimes")
    with pytest.raises(ValueError, match="mask_features"):
        _decoder(mask_on=True)(_features()[0], None)


def test_box_only_pixel_decoder_builds_no_mask_path():
    channels = {"res3": 24, "res4": 40, "res5": 48}
    strides = {"res3": 8, "res4": 16, "res5": 32}
    decoder = MSDeformAttnPixelDecoder(
        channels,
        strides,
        conv_dim=32,
        mask_dim=24,
        num_layers=1,
        n_heads=4,
        n_points=2,
        dim_feedforward=48,
        mask_features_on=False,
    )
    with torch.no_grad():
        for layer in decoder.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(std=0.01)
            layer.self_attn.attention_weights.weight.normal_(std=0.01)
    feats = {
        k: torch.randn(2, c, 72 // strides[k] + 1, 136 // strides[k]) for k, c in channels.items()
    }
    mask_features, multi_scale = decoder(feats)
    assert mask_features is None and len(multi_scale) == 3
    sum(x.square().mean() for x in multi_scale).backward()
    missing = [
        n for n, p in decoder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert not missing, missing
    assert decoder.mask_features is None and len(decoder.lateral_convs) == 0
