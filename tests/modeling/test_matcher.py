"""HungarianMatcher against brute-force enumeration of assignments (independent costs)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from clusterformer.modeling.matcher import HungarianMatcher


def _naive_giou(a, b):
    """GIoU of two cxcywh boxes, with Python floats."""

    def xyxy(box):
        cx, cy, w, h = box
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    ax0, ay0, ax1, ay1 = xyxy(a)
    bx0, by0, bx1, by1 = xyxy(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _naive_cost(pred_logits, pred_mask, pred_box, label, tgt_mask, tgt_box, w):
    """Cost of one (query, target) pair on all pixels (same resolution), from the definitions."""
    prob = pred_logits.softmax(-1)[label].item()
    p = pred_mask.flatten()
    t = tgt_mask.flatten().float()
    bce = F.binary_cross_entropy_with_logits(p, t).item()
    s = p.sigmoid()
    dice = 1 - (2 * (s * t).sum().item() + 1) / (s.sum().item() + t.sum().item() + 1)
    cost = -w["class"] * prob + w["mask"] * bce + w["dice"] * dice
    if pred_box is not None:
        cost += w["bbox"] * (pred_box - tgt_box).abs().sum().item()
        cost -= w["giou"] * _naive_giou(pred_box.tolist(), tgt_box.tolist())
    return cost


def _brute_force(cost):
    """Minimum total cost over all injective maps target -> query."""
    Q, T = len(cost), len(cost[0])
    return min(
        sum(cost[q][t] for t, q in enumerate(perm)) for perm in itertools.permutations(range(Q), T)
    )


def _random_case(B, Q, K, sizes, with_boxes, H=6, W=5):
    outputs = {
        "pred_logits": torch.randn(B, Q, K + 1) * 2,
        "pred_masks": torch.randn(B, Q, H, W) * 3,
    }
    if with_boxes:
        outputs["pred_boxes"] = torch.cat(
            [torch.rand(B, Q, 2) * 0.6 + 0.2, torch.rand(B, Q, 2) * 0.3 + 0.05], -1
        )
    targets = []
    for n in sizes:
        t = {"labels": torch.randint(0, K, (n,)), "masks": torch.rand(n, H, W) > 0.5}
        if with_boxes:
            t["boxes"] = torch.cat(
                [torch.rand(n, 2) * 0.6 + 0.2, torch.rand(n, 2) * 0.3 + 0.05], -1
            )
        targets.append(t)
    return outputs, targets


@pytest.mark.parametrize("with_boxes", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(seed, with_boxes):
    torch.manual_seed(seed)
    w = {
        "class": 2.0,
        "mask": 5.0,
        "dice": 5.0,
        "bbox": 5.0 if with_boxes else 0.0,
        "giou": 2.0 if with_boxes else 0.0,
    }
    matcher = HungarianMatcher(
        w["class"], w["mask"], w["dice"], num_points=0, cost_bbox=w["bbox"], cost_giou=w["giou"]
    )
    B, Q, K = 3, 5, 4
    outputs, targets = _random_case(B, Q, K, sizes=[3, 5, 1], with_boxes=with_boxes)
    indices = matcher(outputs, targets)
    matrices = matcher.cost_matrices(outputs, targets)
    for b, (rows, cols) in enumerate(indices):
        n = len(targets[b]["labels"])
        cost = [
            [
                _naive_cost(
                    outputs["pred_logits"][b, q],
                    outputs["pred_masks"][b, q],
                    outputs["pred_boxes"][b, q] if with_boxes else None,
                    int(targets[b]["labels"][t]),
                    targets[b]["masks"][t],
                    targets[b]["boxes"][t] if with_boxes else None,
                    w,
                )
                for t in range(n)
            ]
            for q in range(Q)
        ]
        assert torch.allclose(matrices[b], torch.tensor(cost), atol=1e-5)
        assert len(rows) == len(cols) == n
        assert sorted(cols.tolist()) == list(range(n)) and len(set(rows.tolist())) == n
        assert rows.tolist() == sorted(rows.tolist())
        matched = sum(cost[q][t] for q, t in zip(rows.tolist(), cols.tolist()))
        assert math.isclose(matched, _brute_force(cost), rel_tol=1e-6, abs_tol=1e-6)


def test_point_costs_are_shared_reproducible_and_estimate_dense_costs():
    torch.manual_seed(0)
    outputs, targets = _random_case(2, 4, 3, sizes=[2, 3], with_boxes=False, H=12, W=12)
    # Smooth masks so that bilinear point reads are close to the pixel values.
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 12), torch.linspace(-1, 1, 12), indexing="ij")
    outputs["pred_masks"] = torch.stack(
        [torch.stack([3 * xx, -3 * yy, 2 * (xx + yy), xx * yy])] * 2
    )
    dense = HungarianMatcher(2.0, 5.0, 5.0, num_points=0).cost_matrices(outputs, targets)
    points = HungarianMatcher(2.0, 5.0, 5.0, num_points=20000)
    a = points.cost_matrices(outputs, targets, generator=torch.Generator().manual_seed(3))
    b = points.cost_matrices(outputs, targets, generator=torch.Generator().manual_seed(3))
    for ma, mb, md in zip(a, b, dense):
        assert torch.equal(ma, mb)
        assert torch.allclose(ma, md, atol=0.25), (ma - md).abs().max()


def test_prediction_and_target_masks_at_different_resolutions():
    # A stride-4 prediction of exactly the target's shape must be matched to it.
    target = torch.zeros(2, 32, 32, dtype=torch.bool)
    target[0, :16] = True
    target[1, 16:] = True
    pred = torch.full((1, 2, 8, 8), -8.0)
    pred[0, 0, 4:] = 8.0  # query 0 predicts the bottom half
    pred[0, 1, :4] = 8.0  # query 1 the top half
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": pred}
    matcher = HungarianMatcher(1.0, 1.0, 1.0, num_points=500)
    ((rows, cols),) = matcher(outputs, [{"labels": torch.tensor([0, 1]), "masks": target}])
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_empty_targets_and_errors():
    outputs, _ = _random_case(1, 3, 2, sizes=[], with_boxes=False)
    matcher = HungarianMatcher(1.0, 1.0, 1.0, num_points=10)
    ((rows, cols),) = matcher(
        outputs, [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 6, 5)}]
    )
    assert rows.numel() == 0 and cols.numel() == 0
    with pytest.raises(KeyError, match="pred_boxes"):
        HungarianMatcher(1.0, 0.0, 0.0, cost_bbox=1.0)(
            outputs, [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}]
        )
    with pytest.raises(ValueError, match="targets"):
        matcher(outputs, [])


def test_focal_class_cost_hand_values():
    logits = torch.tensor([[[2.0, -1.0, 0.5]]])  # one query, K = 2 (+ an ignored no-object column)
    matcher = HungarianMatcher(
        1.0, 0.0, 0.0, class_cost_type="focal", focal_alpha=0.25, focal_gamma=2.0
    )
    (cost,) = matcher.cost_matrices({"pred_logits": logits}, [{"labels": torch.tensor([0, 1])}])
    expected = []
    for z in (2.0, -1.0):
        p = 1 / (1 + math.exp(-z))
        pos = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
        neg = 0.75 * p**2 * -math.log(1 - p + 1e-8)
        expected.append(pos - neg)
    assert torch.allclose(cost, torch.tensor([expected]), atol=1e-6)


def _naive_focal_cost(logit, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-logit))
    pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
    neg = (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
    return pos - neg


@pytest.mark.parametrize("class_cost_type", ["focal", "softmax"])
@pytest.mark.parametrize("seed", range(3))
def test_detection_matching_matches_brute_force(seed, class_cost_type):
    """The detection configuration: class + L1 + GIoU costs, no masks (DINO's weights)."""
    torch.manual_seed(seed)
    w = {"class": 2.0, "bbox": 5.0, "giou": 2.0}
    matcher = HungarianMatcher(
        w["class"],
        0.0,
        0.0,
        cost_bbox=w["bbox"],
        cost_giou=w["giou"],
        class_cost_type=class_cost_type,
    )
    B, Q, K = 2, 6, 3
    outputs, targets = _random_case(B, Q, K, sizes=[4, 2], with_boxes=True)
    del outputs["pred_masks"]
    for t in targets:
        del t["masks"]
    indices = matcher(outputs, targets)
    for b, (rows, cols) in enumerate(indices):
        cost = []
        for q in range(Q):
            row = []
            for t in range(len(targets[b]["labels"])):
                label = int(targets[b]["labels"][t])
                logits = outputs["pred_logits"][b, q]
                if class_cost_type == "focal":
                    c = w["class"] * _naive_focal_cost(logits[label].item())
                else:
                    c = -w["class"] * logits.softmax(-1)[label].item()
                pred, tgt = outputs["pred_boxes"][b, q], targets[b]["boxes"][t]
                c += w["bbox"] * (pred - tgt).abs().sum().item()
                c -= w["giou"] * _naive_giou(pred.tolist(), tgt.tolist())
                row.append(c)
            cost.append(row)
        assert torch.allclose(
            matcher.cost_matrices(outputs, targets)[b], torch.tensor(cost), atol=1e-5
        )
        matched = sum(cost[q][t] for q, t in zip(rows.tolist(), cols.tolist()))
        assert math.isclose(matched, _brute_force(cost), rel_tol=1e-6, abs_tol=1e-6)
