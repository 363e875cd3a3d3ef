"""Semantic / panoptic / instance inference on hand-made logits."""

import math

import pytest
import torch

from clusterformer.modeling.postprocessing import (
    instance_inference,
    keep_largest_component,
    panoptic_inference,
    resize_mask_logits,
    sem_seg_postprocess,
    semantic_inference,
)

K = 3  # classes 0 and 1 are things, 2 is stuff
THINGS = {0, 1}
BIG = 10.0


def _class_logits(category: int, prob: float) -> torch.Tensor:
    """K + 1 logits whose softmax gives ``prob`` to ``category`` and equal shares to the rest."""
    logits = torch.zeros(K + 1)
    logits[category] = math.log(K * prob / (1 - prob))
    return logits


def _mask(rows, cols) -> torch.Tensor:
    m = torch.full((4, 4), -BIG)
    m[rows, cols] = BIG
    return m


def _panoptic_case():
    queries = [
        (_class_logits(0, 0.99), _mask(slice(0, 2), slice(0, 2))),  # thing 0, top-left
        (_class_logits(1, 0.99), _mask(slice(0, 2), slice(2, 4))),  # thing 1, top-right
        (_class_logits(2, 0.98), _mask(slice(2, 4), slice(0, 2))),  # stuff 2, bottom-left
        (_class_logits(2, 0.97), _mask(slice(2, 4), slice(2, 3))),  # stuff 2 again: merged
        (_class_logits(K, 0.99), _mask(slice(0, 4), slice(0, 4))),  # "no object": ignored
        (_class_logits(0, 0.5), _mask(slice(0, 4), slice(0, 4))),  # score <= 0.8: ignored
        # Kept, but other queries win 6 of its 8 pixels: 2 / 8 < overlap threshold -> dropped.
        (_class_logits(0, 0.9), _mask(slice(2, 4), slice(0, 4))),
    ]
    return torch.stack([q[0] for q in queries]), torch.stack([q[1] for q in queries])


def test_panoptic_inference_rules():
    mask_cls, mask_pred = _panoptic_case()
    seg, info = panoptic_inference(mask_cls, mask_pred, thing_ids=THINGS)
    expected = torch.tensor(
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 0], [3, 3, 3, 0]], dtype=torch.int32
    )
    assert seg.dtype == torch.int32
    assert torch.equal(seg, expected)
    scores = [s.pop("score") for s in info]
    assert info == [
        {"id": 1, "isthing": True, "category_id": 0},
        {"id": 2, "isthing": True, "category_id": 1},
        {"id": 3, "isthing": False, "category_id": 2},
    ]
    # Each segment's score is its (first) query's class probability.
    assert scores == pytest.approx([0.99, 0.99, 0.98], abs=1e-5)


def test_panoptic_overlap_threshold_and_label_divisor():
    mask_cls, mask_pred = _panoptic_case()
    # With a permissive overlap threshold the last query keeps its two pixels as a second
    # instance of class 0.
    seg, info = panoptic_inference(
        mask_cls, mask_pred, thing_ids=THINGS, overlap_threshold=0.2, label_divisor=1000
    )
    assert [s["id"] for s in info] == [1, 1001, 2001, 2]
    assert seg[2, 3] == 2 and seg[3, 3] == 2 and seg[0, 2] == 1001 and seg[3, 2] == 2001
    # Thing segments of one class are not merged; stuff would be.
    assert [s["isthing"] for s in info] == [True, True, False, True]


def test_panoptic_nothing_kept():
    mask_cls, mask_pred = _panoptic_case()
    seg, info = panoptic_inference(
        mask_cls, mask_pred, thing_ids=THINGS, object_mask_threshold=0.995
    )
    assert info == [] and torch.equal(seg, torch.zeros(4, 4, dtype=torch.int32))


def test_semantic_inference_matches_definition():
    torch.manual_seed(0)
    mask_cls, mask_pred = torch.randn(5, K + 1), torch.randn(5, 3, 2)
    out = semantic_inference(mask_cls, mask_pred)
    expected = torch.zeros(K, 3, 2)
    for q in range(5):
        probs = mask_cls[q].softmax(-1)
        for c in range(K):
            expected[c] += probs[c] * mask_pred[q].sigmoid()
    assert torch.allclose(out, expected, atol=1e-6)


def test_instance_inference_topk_scores_and_boxes():
    mask_cls = torch.stack([_class_logits(0, 0.9), _class_logits(2, 0.8), _class_logits(1, 0.7)])
    mask_pred = torch.stack(
        [
            _mask(slice(0, 2), slice(1, 4)),  # rows 0-1, cols 1-3
            _mask(slice(3, 4), slice(0, 1)),  # one pixel
            torch.full((4, 4), -BIG),  # empty
        ]
    )
    mask_pred[0, 0, 1] = 2.0  # lowers the mean in-mask probability of query 0
    out = instance_inference(mask_cls, mask_pred, test_topk_per_image=3)
    # The three best (query, class) pairs are each query's top class (0.9, 0.8, 0.7).
    assert out["pred_classes"].tolist() == [0, 2, 1]
    assert out["pred_masks"].dtype == torch.bool and out["pred_masks"].shape == (3, 4, 4)
    mask0_score = (5 * torch.sigmoid(torch.tensor(BIG)) + torch.sigmoid(torch.tensor(2.0))) / 6
    expected_scores = torch.tensor([0.9 * mask0_score, 0.8 * torch.sigmoid(torch.tensor(BIG)), 0.0])
    assert torch.allclose(out["scores"], expected_scores, atol=1e-5)
    assert torch.equal(
        out["pred_boxes"],
        torch.tensor([[1.0, 0.0, 4.0, 2.0], [0.0, 3.0, 1.0, 4.0], [0.0, 0.0, 0.0, 0.0]]),
    )
    only_things = instance_inference(
        mask_cls, mask_pred, test_topk_per_image=3, thing_ids=THINGS, panoptic_on=True
    )
    assert only_things["pred_classes"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="thing_ids"):
        instance_inference(mask_cls, mask_pred, panoptic_on=True)


def test_instance_inference_counts_class_pairs_per_query():
    # One query, two plausible classes: top-k over queries x classes yields both.
    logits = torch.tensor([[2.0, 1.9, -5.0, -5.0]])
    out = instance_inference(logits, torch.randn(1, 4, 4), test_topk_per_image=2)
    assert out["pred_classes"].tolist() == [0, 1]
    assert instance_inference(logits, torch.randn(1, 4, 4), test_topk_per_image=100)[
        "scores"
    ].shape == (3,)


def test_keep_largest_component_drops_the_other_regions():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True  # 4 pixels
    masks[0, 3:5, 3:6] = True  # 6 pixels: kept
    masks[0, 4, 0] = True  # 1 pixel
    masks[1, 1, 1] = masks[1, 2, 2] = True  # diagonal neighbours are two regions: the first kept
    kept = keep_largest_component(masks)
    expected = torch.zeros_like(masks)
    expected[0, 3:5, 3:6] = True
    expected[1, 1, 1] = True
    assert torch.equal(kept, expected)  # the empty mask 2 stays empty
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        keep_largest_component(masks[0])


def test_instance_inference_largest_component_cleans_masks_scores_and_boxes():
    mask_pred = _mask(slice(0, 2), slice(0, 2))
    mask_pred[3, 3] = 1.0  # a stray pixel with a low probability, far from the object
    mask_cls = _class_logits(0, 0.9)[None]
    plain = instance_inference(mask_cls, mask_pred[None], test_topk_per_image=1)
    assert plain["pred_boxes"].tolist() == [[0.0, 0.0, 4.0, 4.0]]
    cleaned = instance_inference(
        mask_cls, mask_pred[None], test_topk_per_image=1, largest_component=True
    )
    assert cleaned["pred_boxes"].tolist() == [[0.0, 0.0, 2.0, 2.0]]
    assert int(cleaned["pred_masks"].sum()) == 4
    assert torch.allclose(cleaned["scores"], 0.9 * torch.sigmoid(torch.tensor(BIG)), atol=1e-5)
    assert float(cleaned["scores"]) > float(plain["scores"])


def test_sem_seg_postprocess_crops_padding_then_resizes():
    padded = torch.full((2, 6, 8), 100.0)
    padded[:, :4, :5] = torch.arange(40, dtype=torch.float32).view(2, 4, 5)
    assert torch.equal(sem_seg_postprocess(padded, (4, 5), 4, 5), padded[:, :4, :5])
    resized = sem_seg_postprocess(padded, (4, 5), 8, 10)
    assert resized.shape == (2, 8, 10) and resized.max() < 100
    # Stride-4 logits of a 24x32 padded input, image 16x20 inside, original 32x40.
    constant = torch.full((3, 6, 8), 1.5)
    out = resize_mask_logits(constant, (24, 32), (16, 20), (32, 40))
    assert out.shape == (3, 32, 40) and torch.allclose(out, torch.full_like(out, 1.5))
    with pytest.raises(ValueError, match="image size"):
        sem_seg_postprocess(padded, (7, 5), 4, 5)
