"""Detection inference: box coordinates back to the original image, DETR-family top-k rules,
and instances carrying predicted boxes."""

import math

import pytest
import torch

from clusterformer.modeling.box_ops import box_xyxy_to_cxcywh
from clusterformer.modeling.postprocessing import (
    boxes_to_output_size,
    class_probabilities,
    detection_inference,
    instance_inference,
)


def test_boxes_to_output_size_uses_the_padded_canvas_and_clips_to_the_image():
    # A 40 x 56 (h x w) image at the top left of a 64 x 96 padded batch tensor, shown at 80 x 112.
    padded, image, output = (64, 96), (40, 56), (80, 112)
    xyxy_input = torch.tensor([[8.0, 4.0, 24.0, 36.0], [50.0, 30.0, 70.0, 50.0]])
    normalised = box_xyxy_to_cxcywh(xyxy_input / torch.tensor([96.0, 64.0, 96.0, 64.0]))
    out = boxes_to_output_size(normalised, padded, image, output)
    # The second box reaches into the padding: clipped to the image (x <= 56, y <= 40).
    expected = torch.tensor([[16.0, 8.0, 48.0, 72.0], [100.0, 60.0, 112.0, 80.0]])
    assert torch.allclose(out, expected, atol=1e-4)
    with pytest.raises(ValueError, match="boxes"):
        boxes_to_output_size(torch.rand(2, 3), padded, image, output)


def test_sigmoid_detection_takes_topk_over_queries_and_classes():
    logits = torch.tensor(
        [
            [3.0, 2.0, -5.0, 9.0],  # last column: the untrained no-object logit, ignored
            [-4.0, -1.0, 0.0, 9.0],
            [1.0, -6.0, 2.5, 9.0],
        ]
    )
    boxes = torch.arange(12.0).view(3, 4)
    out = detection_inference(logits, boxes, test_topk_per_image=4, class_activation="sigmoid")
    # Sigmoid scores, best first: (q0, c0) 3.0, (q2, c2) 2.5, (q0, c1) 2.0, (q2, c0) 1.0.
    assert out["pred_classes"].tolist() == [0, 2, 1, 0]
    assert torch.allclose(out["scores"], torch.tensor([3.0, 2.5, 2.0, 1.0]).sigmoid())
    assert torch.equal(out["pred_boxes"], boxes[[0, 2, 0, 2]])
    many = detection_inference(logits, boxes, test_topk_per_image=100, class_activation="sigmoid")
    assert many["scores"].numel() == 9  # Q x K pairs at most


def test_softmax_detection_takes_each_query_best_real_class():
    logits = torch.tensor(
        [
            [0.0, 2.0, 0.0, 5.0],  # "no object" most likely, still reports its best class 1
            [3.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ]
    )
    boxes = torch.rand(3, 4)
    out = detection_inference(logits, boxes, test_topk_per_image=2, class_activation="softmax")
    probs = logits.softmax(-1)
    assert out["pred_classes"].tolist() == [0, 2]
    assert torch.allclose(out["scores"], torch.stack([probs[1, 0], probs[2, 2]]))
    assert torch.equal(out["pred_boxes"], boxes[[1, 2]])
    every = detection_inference(logits, boxes, test_topk_per_image=10)
    assert every["pred_classes"].tolist() == [0, 2, 1]  # one detection per query
    with pytest.raises(ValueError, match="box_pred"):
        detection_inference(logits, boxes[:2])
    with pytest.raises(ValueError, match="class_activation"):
        class_probabilities(logits, "tanh")


def test_instances_carry_the_predicted_boxes():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    masks = torch.full((2, 6, 8), -10.0)
    masks[0, 1:3, 2:5] = 10.0
    masks[1, 4:6, 0:2] = 10.0
    predicted = torch.tensor([[1.5, 0.5, 5.5, 3.5], [0.0, 3.0, 2.5, 6.0]])
    from_masks = instance_inference(logits, masks, test_topk_per_image=2)
    from_boxes = instance_inference(logits, masks, test_topk_per_image=2, box_pred=predicted)
    order = from_boxes["pred_classes"].tolist()  # query q predicts class q
    assert torch.equal(from_boxes["pred_boxes"], predicted[order])
    assert torch.equal(from_masks["pred_boxes"][order.index(0)], torch.tensor([2.0, 1, 5, 3]))
    for key in ("scores", "pred_classes", "pred_masks"):
        assert torch.equal(from_masks[key], from_boxes[key])
    sigmoid = instance_inference(logits, masks, test_topk_per_image=1, class_activation="sigmoid")
    assert math.isclose(sigmoid["scores"].item(), torch.tensor(4.0).sigmoid().item(), rel_tol=1e-4)
    with pytest.raises(ValueError, match="box_pred"):
        instance_inference(logits, masks, box_pred=predicted[:1])
