"""Box utilities against torchvision.ops (when importable) and hand values."""

import pytest
import torch

from clusterformer.modeling.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
    masks_to_boxes,
)


def _random_xyxy(n: int) -> torch.Tensor:
    xy = torch.rand(n, 2) * 50
    wh = torch.rand(n, 2) * 30 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_conversions_round_trip_and_hand_values():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    cxcywh = box_xyxy_to_cxcywh(boxes)
    assert torch.equal(cxcywh, torch.tensor([[20.0, 40.0, 20.0, 40.0]]))
    random = _random_xyxy(20)
    assert torch.allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(random)), random, atol=1e-5)


def test_iou_and_giou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    iou, union = box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.0]]))
    assert torch.allclose(union, torch.tensor([[7.0, 8.0]]))
    # Enclosing boxes: 3x3 = 9 and 6x2 = 12.
    giou = generalized_box_iou(a, b)
    assert torch.allclose(giou, torch.tensor([[1 / 7 - 2 / 9, 0.0 - 4 / 12]]))


def test_giou_rejects_degenerate_boxes():
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(
            torch.tensor([[2.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        )


def test_against_torchvision():
    ops = pytest.importorskip("torchvision.ops")
    a, b = _random_xyxy(13), _random_xyxy(7)
    assert torch.allclose(box_iou(a, b)[0], ops.box_iou(a, b), atol=1e-6)
    assert torch.allclose(generalized_box_iou(a, b), ops.generalized_box_iou(a, b), atol=1e-6)
    cxcywh = box_xyxy_to_cxcywh(a)
    assert torch.allclose(
        box_cxcywh_to_xyxy(cxcywh), ops.box_convert(cxcywh, "cxcywh", "xyxy"), atol=1e-5
    )
    masks = torch.rand(6, 17, 23) > 0.97
    masks[0, 3, 4] = True  # never empty
    masks = masks[masks.flatten(1).any(1)]
    # torchvision reports the last occupied pixel index; ours its far edge (+1).
    expected = ops.masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert torch.equal(masks_to_boxes(masks), expected)


def test_masks_to_boxes_hand_values_and_empty():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[2, 4, 0] = True
    boxes = masks_to_boxes(masks)
    assert torch.equal(
        boxes, torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0], [0.0, 4.0, 1.0, 5.0]])
    )
    assert masks_to_boxes(torch.zeros(0, 4, 4)).shape == (0, 4)


def test_inverse_sigmoid_inverts_sigmoid_and_stays_finite():
    x = torch.linspace(-6, 6, 25)
    assert torch.allclose(inverse_sigmoid(x.sigmoid()), x, atol=1e-4)
    assert torch.allclose(inverse_sigmoid(torch.tensor([0.3])), torch.logit(torch.tensor([0.3])))
    ends = inverse_sigmoid(torch.tensor([0.0, 1.0]))
    assert torch.isfinite(ends).all() and ends[0] < -11 and ends[1] > 11


def test_xyxy_to_cxcywh_and_giou_of_cxcywh_boxes_against_torchvision():
    ops = pytest.importorskip("torchvision.ops")
    a, b = _random_xyxy(17), _random_xyxy(9)
    assert torch.allclose(box_xyxy_to_cxcywh(a), ops.box_convert(a, "xyxy", "cxcywh"), atol=1e-5)
    # The losses' path: normalised cxcywh -> xyxy -> GIoU.
    ca, cb = box_xyxy_to_cxcywh(a) / 80, box_xyxy_to_cxcywh(b) / 80
    expected = ops.generalized_box_iou(
        ops.box_convert(ca, "cxcywh", "xyxy"), ops.box_convert(cb, "cxcywh", "xyxy")
    )
    got = generalized_box_iou(box_cxcywh_to_xyxy(ca), box_cxcywh_to_xyxy(cb))
    assert torch.allclose(got, expected, atol=1e-6)
