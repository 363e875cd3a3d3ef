"""The ClusterFormer meta-architecture with boxes: detection-only and instance-with-boxes modes
(training steps reach every parameter), the padded-canvas box convention from targets to
detections on non-square, differently padded images, config checks, and the detection configs."""

import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances

import clusterformer.d2  # noqa: F401  (registers the shapes data sets)
from clusterformer import add_clusterformer_config
from clusterformer.engine.lr_scheduler import build_lr_scheduler
from clusterformer.evaluation import build_evaluator
from clusterformer.modeling.box_ops import box_cxcywh_to_xyxy
from clusterformer.modeling.postprocessing import boxes_to_output_size

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DETECTION_CONFIG = "configs/shapes/detection/clusterformer_nano.yaml"
INSTANCE_BOXES_CONFIG = "configs/shapes/instance-segmentation/clusterformer_nano_boxes.yaml"
# Two non-square images of different shapes: the batch is padded to 96 x 128 (multiple of 32).
IMAGE_SIZES = ((72, 100), (96, 64))
GT_BOXES = (
    [[4.0, 6.0, 40.0, 30.0], [50.0, 20.0, 100.0, 72.0]],  # the second touches the right border
    [[0.0, 0.0, 20.0, 96.0], [30.0, 40.0, 60.0, 90.0]],  # the first spans the full height
)


def _cfg(config=DETECTION_CONFIG, *opts):
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(["MODEL.CLUSTER_DECODER.DEC_LAYERS", "3", *opts])
    return cfg


def _batch(with_masks: bool):
    batch = []
    for (h, w), boxes in zip(IMAGE_SIZES, GT_BOXES):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.tensor([1, 3])
        if with_masks:
            masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
            for m, (x0, y0, x1, y1) in zip(masks, boxes):
                m[int(y0) : int(y1), int(x0) : int(x1)] = True
            inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
        batch.append({"image": image, "instances": inst, "height": 2 * h, "width": 3 * w})
    return batch


@pytest.mark.parametrize("config", [DETECTION_CONFIG, INSTANCE_BOXES_CONFIG])
def test_a_training_step_reaches_every_parameter(config):
    """DDP's find_unused_parameters=False needs a gradient for every trainable parameter."""
    torch.manual_seed(0)
    model = build_model(_cfg(config))
    model.train()
    mask_on = config == INSTANCE_BOXES_CONFIG
    losses = model(_batch(with_masks=mask_on))
    expected = {"loss_ce", "loss_bbox", "loss_giou"} | (
        {"loss_mask", "loss_dice"} if mask_on else set()
    )
    assert {k for k in losses if not k[-1].isdigit()} == expected
    assert "loss_bbox_2" in losses and "loss_bbox_3" not in losses  # 3 layers: aux 0..2
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    if not mask_on:
        # Nothing of the pixel level is built: no mask head, no stride-4 path, no res2 output.
        names = [n for n, _ in model.named_parameters()]
        assert not any("mask_embed" in n or "lateral_convs" in n for n in names)
        assert model.pixel_decoder.mask_features is None
        assert "res2" not in model.backbone.output_shape()


def test_box_targets_and_detections_share_the_padded_canvas():
    """Targets are normalised by the padded batch size; feeding them back as predictions gives
    the ground-truth boxes at the original image sizes."""
    cfg = _cfg(DETECTION_CONFIG, "TEST.DETECTIONS_PER_IMAGE", "2")
    model = build_model(cfg)
    batch = _batch(with_masks=False)
    images = model.preprocess_images(batch)
    assert tuple(images.tensor.shape[-2:]) == (96, 128)
    targets = model.prepare_targets([x["instances"] for x in batch], images)
    for target, boxes in zip(targets, GT_BOXES):
        canvas = torch.tensor([128.0, 96.0, 128.0, 96.0])
        assert torch.allclose(box_cxcywh_to_xyxy(target["boxes"]) * canvas, torch.tensor(boxes))

    Q = cfg.MODEL.CLUSTER_DECODER.NUM_OBJECT_QUERIES
    pred_boxes = torch.full((2, Q, 4), 0.25)
    logits = torch.full((2, Q, 5), -8.0)
    for b, target in enumerate(targets):
        pred_boxes[b, :2] = target["boxes"]
        logits[b, 0, 1], logits[b, 1, 3] = 5.0, 4.0  # the two queries, with their classes
    model.eval()
    model.predict = lambda _images: {"pred_logits": logits, "pred_boxes": pred_boxes}
    with torch.no_grad():
        results = model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
    for result, boxes, (h, w) in zip(results, GT_BOXES, IMAGE_SIZES):
        inst = result["instances"]
        assert inst.image_size == (2 * h, 3 * w) and not inst.has("pred_masks")
        scale = torch.tensor([3.0, 2.0, 3.0, 2.0])
        assert torch.allclose(inst.pred_boxes.tensor, torch.tensor(boxes) * scale, atol=1e-3)
        assert inst.pred_classes.tolist() == [1, 3]


def test_instance_outputs_carry_predicted_boxes():
    model = build_model(_cfg(INSTANCE_BOXES_CONFIG, "TEST.DETECTIONS_PER_IMAGE", "5")).eval()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in _batch(False)]
    with torch.no_grad():
        outputs = model.predict(model.preprocess_images(batch).tensor)
        results = model(batch)
    for i, (result, (h, w)) in enumerate(zip(results, IMAGE_SIZES)):
        inst = result["instances"]
        assert inst.has("pred_masks") and len(inst) == 5
        expected = boxes_to_output_size(outputs["pred_boxes"][i], (96, 128), (h, w), (2 * h, 3 * w))
        # Every reported box is one of the queries' predicted boxes, not a box of a mask.
        distance = torch.cdist(inst.pred_boxes.tensor, expected).min(dim=1).values
        assert (distance < 1e-3).all()


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.CLUSTER_DECODER.TEST.INSTANCE_ON", "True"], "need masks"),
        (["MODEL.CLUSTER_DECODER.BOX_ON", "False"], "MASK_ON and BOX_ON are both False"),
        (["MODEL.CLUSTERFORMER_BACKBONE.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']"], "res2"),
        (["MODEL.CLUSTER_DECODER.CLASS_LOSS", "focal"], "CLASS_LOSS"),
    ],
)
def test_inconsistent_detection_configs_are_rejected(opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(_cfg(DETECTION_CONFIG, *opts))


def test_segmentation_config_checks():
    panoptic = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"
    with pytest.raises(ValueError, match="DETECTION_ON=True needs BOX_ON"):
        build_model(_cfg(panoptic, "MODEL.CLUSTER_DECODER.TEST.DETECTION_ON", "True"))
    with pytest.raises(ValueError, match="no 'no object' class"):
        build_model(_cfg(panoptic, "MODEL.CLUSTER_DECODER.CLASS_LOSS", "sigmoid_focal"))
    cfg = _cfg(DETECTION_CONFIG, "MODEL.CLUSTER_DECODER.TEST.DETECTION_ON", "False")
    with pytest.raises(ValueError, match="returns no instances"):
        build_evaluator(cfg, "shapes_instance_val", "/tmp/unused")


def test_coco_detection_schedules_and_model():
    configs = sorted(glob.glob(os.path.join(REPO, "configs/coco/detection/clusterformer_*.yaml")))
    assert len(configs) == 6
    for path in configs:
        cfg = _cfg(os.path.relpath(path, REPO))
        s = cfg.SOLVER
        epochs = int(os.path.basename(path).split("_")[-1][:-7])
        assert s.MAX_ITER == epochs * 7500 and s.IMS_PER_BATCH == 16
        assert s.STEPS == ({12: 11, 24: 20, 36: 30}[epochs] * 7500,)
        assert (s.BASE_LR, s.BACKBONE_MULTIPLIER, s.WEIGHT_DECAY) == (1e-4, 0.1, 1e-4)
        assert cfg.INPUT.DATASET_MAPPER_NAME == "detr_detection"
        assert 300 <= cfg.MODEL.CLUSTER_DECODER.NUM_OBJECT_QUERIES <= 900
        depths = cfg.MODEL.CLUSTERFORMER_BACKBONE.DEPTHS
        assert depths == ([2, 2, 6, 2] if "tiny" in path else [2, 2, 18, 2])
    cfg = _cfg("configs/coco/detection/clusterformer_tiny_12ep.yaml", "MODEL.DEVICE", "cpu")
    model = build_model(cfg)
    scheduler = build_lr_scheduler(cfg, torch.optim.SGD(model.parameters(), lr=1e-4))
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-4)
    assert model.transformer_decoder.num_queries == 300 and model.transformer_decoder.box_on
