"""A small box-only decoder (box-level clustering) learns fixed target boxes and classes (CPU)."""

import pytest
import torch

from clusterformer.modeling.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from clusterformer.modeling.criterion import SetCriterion
from clusterformer.modeling.matcher import HungarianMatcher
from clusterformer.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from clusterformer.modeling.postprocessing import detection_inference
from clusterformer.modeling.transformer_decoder import ClusteringTransformerDecoder

CHANNELS = {"res3": 16, "res4": 16, "res5": 16}
STRIDES = {"res3": 8, "res4": 16, "res5": 32}
HEIGHT, WIDTH = 64, 96
NUM_CLASSES = 3
# Normalised cxcywh: a wide box at the top left, a tall one on the right border, a small one.
TARGET_BOXES = torch.tensor([[0.25, 0.2, 0.4, 0.3], [0.85, 0.5, 0.3, 1.0], [0.5, 0.75, 0.1, 0.15]])


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("restrict_to_boxes", [True, False])
@pytest.mark.parametrize("class_loss", ["sigmoid_focal", "softmax_ce"])
def test_overfits_fixed_boxes(restrict_to_boxes, class_loss):
    torch.manual_seed(0)
    features = {
        k: torch.randn(1, c, HEIGHT // STRIDES[k], WIDTH // STRIDES[k]) for k, c in CHANNELS.items()
    }
    pixel_decoder = MSDeformAttnPixelDecoder(
        CHANNELS,
        STRIDES,
        conv_dim=32,
        num_layers=1,
        n_heads=4,
        n_points=2,
        dim_feedforward=64,
        mask_features_on=False,
    )
    focal = class_loss == "sigmoid_focal"
    decoder = ClusteringTransformerDecoder(
        32,
        NUM_CLASSES,
        hidden_dim=32,
        num_queries=6,
        nheads=4,
        dim_feedforward=64,
        dec_layers=3,
        clustering_iterations=2,
        mask_on=False,
        box_on=True,
        restrict_to_boxes=restrict_to_boxes,
        class_prior_prob=0.01 if focal else None,
    )
    matcher = HungarianMatcher(
        2.0, 0.0, 0.0, cost_bbox=5.0, cost_giou=2.0, class_cost_type="focal" if focal else "softmax"
    )
    criterion = SetCriterion(
        NUM_CLASSES, matcher, losses=("labels", "boxes"), class_loss=class_loss
    )
    params = list(pixel_decoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    targets = [{"labels": torch.tensor([0, 1, 2]), "boxes": TARGET_BOXES}]
    history = []
    for _ in range(150):
        outputs = decoder(pixel_decoder(features)[1])
        loss = sum(criterion.weight_losses(criterion(outputs, targets)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.25 * sum(history[:5]) / 5, history[::10]

    with torch.no_grad():
        outputs = decoder(pixel_decoder(features)[1])
    detections = detection_inference(
        outputs["pred_logits"][0],
        box_cxcywh_to_xyxy(outputs["pred_boxes"][0]),
        test_topk_per_image=3,
        class_activation="sigmoid" if focal else "softmax",
    )
    # The three best detections are the three targets, with their classes.
    iou = generalized_box_iou(detections["pred_boxes"], box_cxcywh_to_xyxy(TARGET_BOXES))
    best_iou, best_target = iou.max(dim=1)
    assert sorted(best_target.tolist()) == [0, 1, 2]
    assert (best_iou > 0.8).all(), best_iou
    assert torch.equal(detections["pred_classes"], best_target)
