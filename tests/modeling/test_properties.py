"""Property-based tests (hypothesis) of the window partition and of post-processing.

Random map and window sizes: partition then reverse is the identity, padded tokens are exactly
the flagged ones, and centre pooling never reads padding. Random logits: panoptic segments are
disjoint and match ``segments_info``, instance boxes are the tight boxes of their masks, semantic
scores are finite and within their bounds.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterformer.modeling.backbone.windows import (
    WindowGeometry,
    centre_pooling_weights,
    partition_windows,
    reverse_window_indices,
    reverse_windows,
    valid_token_mask,
)
from clusterformer.modeling.postprocessing import (
    instance_inference,
    panoptic_inference,
    semantic_inference,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def windowed_maps(draw):
    height, width = draw(st.integers(1, 23)), draw(st.integers(1, 23))
    window = draw(st.integers(1, 9))
    groups, heads, dim = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**31 - 1))
    return height, width, window, groups, heads, dim, batch, seed


@SETTINGS
@given(windowed_maps())
def test_partition_then_reverse_is_the_identity_and_padding_is_flagged(case):
    height, width, window, groups, heads, dim, batch, seed = case
    generator = torch.Generator().manual_seed(seed)
    # Values in [1, 2): a zero in the windows can only be padding.
    x = 1 + torch.rand(batch, groups * heads * dim, height, width, generator=generator)
    geometry = WindowGeometry.for_map(height, width, window)
    assert geometry.window_h <= window and geometry.window_w <= window
    assert geometry.padded_height >= height and geometry.padded_height - height < geometry.window_h
    assert geometry.padded_width >= width and geometry.padded_width - width < geometry.window_w

    windows = partition_windows(x, geometry, groups, heads)
    assert windows.shape == (
        groups,
        batch,
        heads,
        geometry.num_windows,
        geometry.tokens_per_window,
        dim,
    )
    per_group = x.view(batch, groups, heads * dim, height, width)
    for g in range(groups):
        assert torch.equal(reverse_windows(windows[g], geometry), per_group[:, g])

    padded = (windows == 0).all(dim=-1)  # (groups, B, heads, windows, tokens)
    valid = valid_token_mask(geometry, x.device)
    if valid is None:
        assert not geometry.has_padding and not padded.any()
    else:
        assert torch.equal(padded, ~valid.expand_as(padded))
        assert int(valid.sum()) == height * width

    # Per-token values survive the round trip through the window layout.
    token_ids = torch.arange(height * width).view(1, 1, height, width).float() + 1
    token_windows = partition_windows(token_ids, geometry, 1, 1)[0, :, :, :, :, 0]
    assert torch.equal(
        reverse_window_indices(token_windows, geometry), token_ids.view(1, 1, height, width)
    )

    weights = centre_pooling_weights(geometry, draw_bins(seed), x.device, torch.float64)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=torch.float64))
    if valid is not None:
        assert (weights * (~valid)[:, None, :]).abs().max() == 0


def draw_bins(seed: int) -> int:
    return 1 + seed % 4


@st.composite
def predictions(draw):
    queries = draw(st.integers(1, 8))
    classes = draw(st.integers(1, 5))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    scale = draw(st.sampled_from([0.5, 3.0, 20.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(queries, classes + 1, generator=generator) * scale
    mask_pred = torch.randn(queries, height, width, generator=generator) * scale
    things = {c for c in range(classes) if draw(st.booleans())}
    thresholds = draw(st.sampled_from([(0.0, 0.0), (0.3, 0.5), (0.8, 0.8)]))
    return mask_cls, mask_pred, things, thresholds


@SETTINGS
@given(predictions(), st.sampled_from([None, 1000]))
def test_panoptic_segments_are_disjoint_and_match_segments_info(prediction, label_divisor):
    mask_cls, mask_pred, things, (object_threshold, overlap_threshold) = prediction
    panoptic, segments_info = panoptic_inference(
        mask_cls,
        mask_pred,
        object_mask_threshold=object_threshold,
        overlap_threshold=overlap_threshold,
        thing_ids=things,
        label_divisor=label_divisor,
    )
    assert panoptic.shape == mask_pred.shape[1:] and panoptic.dtype == torch.int32
    ids = [s["id"] for s in segments_info]
    assert len(ids) == len(set(ids)) and 0 not in ids
    # A pixel map holds one id per pixel, so segments are disjoint by construction; what can go
    # wrong is an id in the map without an entry, or an entry without pixels.
    assert set(panoptic.unique().tolist()) - {0} == set(ids)
    num_classes = mask_cls.shape[1] - 1
    stuff_seen = set()
    for segment in segments_info:
        assert 0 <= segment["category_id"] < num_classes
        assert segment["isthing"] == (segment["category_id"] in things)
        if not segment["isthing"]:  # one segment per stuff class
            assert segment["category_id"] not in stuff_seen
            stuff_seen.add(segment["category_id"])
        if label_divisor is not None:
            assert segment["id"] // label_divisor == segment["category_id"]


@SETTINGS
@given(predictions(), st.integers(1, 30), st.booleans())
def test_instance_boxes_contain_exactly_their_masks(prediction, topk, panoptic_on):
    mask_cls, mask_pred, things, _ = prediction
    result = instance_inference(
        mask_cls,
        mask_pred,
        test_topk_per_image=topk,
        thing_ids=things,
        panoptic_on=panoptic_on,
    )
    n = result["scores"].shape[0]
    assert n <= min(topk, mask_cls.shape[0] * (mask_cls.shape[1] - 1))
    assert result["pred_masks"].shape == (n, *mask_pred.shape[1:])
    assert ((result["scores"] >= 0) & (result["scores"] <= 1)).all()
    if panoptic_on:
        assert all(int(c) in things for c in result["pred_classes"])
    height, width = mask_pred.shape[1:]
    rows = torch.arange(height).view(-1, 1) + 0.5
    cols = torch.arange(width).view(1, -1) + 0.5
    for mask, (x0, y0, x1, y1) in zip(result["pred_masks"], result["pred_boxes"].tolist()):
        if not mask.any():
            assert (x0, y0, x1, y1) == (0, 0, 0, 0)
            continue
        inside = (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
        assert not (mask & ~inside).any()  # the box contains the mask
        ys, xs = mask.nonzero(as_tuple=True)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tightly


@SETTINGS
@given(predictions())
def test_semantic_scores_are_finite_and_bounded(prediction):
    mask_cls, mask_pred, _, _ = prediction
    scores = semantic_inference(mask_cls, mask_pred)
    assert scores.shape == (mask_cls.shape[1] - 1, *mask_pred.shape[1:])
    assert torch.isfinite(scores).all() and (scores >= 0).all()
    # Each query spreads at most probability 1 over the classes, times a sigmoid below 1.
    assert (scores.sum(0) <= mask_cls.shape[0] + 1e-5).all()
    extreme = semantic_inference(mask_cls * 1e6, mask_pred * 1e6)
    assert torch.isfinite(extreme).all()
