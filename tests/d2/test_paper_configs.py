"""The COCO, ADE20K and ImageNet configs (which no CPU machine can train): each loads through its
``_BASE_`` chain, carries the recipe of docs/method.md, builds its model and takes one optimiser step
on a small synthetic batch on the CPU with every parameter receiving a gradient."""

import glob
import math
import os

import pytest
import torch
from detectron2.structures import Instances

import clusterformer.d2  # noqa: F401  (registers the data sets the configs name)
from clusterformer.d2.config_files import load_config
from clusterformer.engine.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for folder in ("coco/panoptic-segmentation", "coco/instance-segmentation", "ade20k", "imagenet")
    for p in glob.glob(
        os.path.join(REPO, "configs", folder, "**", "clusterformer_*.yaml"), recursive=True
    )
)
# docs/method.md §1: Tiny 2/2/6/2 and Small 2/2/18/2 blocks.
DEPTHS = {"tiny": [2, 2, 6, 2], "small": [2, 2, 18, 2]}


def test_every_paper_config_is_covered():
    assert len(PAPER_CONFIGS) == 8, PAPER_CONFIGS


def _check_recipe(cfg, path: str) -> None:
    size = "tiny" if "tiny" in path else "small"
    assert list(cfg.MODEL.CLUSTERFORMER_BACKBONE.DEPTHS) == DEPTHS[size]
    assert list(cfg.MODEL.CLUSTERFORMER_BACKBONE.EMBED_DIMS) == [96, 192, 384, 768]
    assert list(cfg.MODEL.CLUSTERFORMER_BACKBONE.MLP_RATIOS) == [8.0, 8.0, 4.0, 4.0]
    assert cfg.MODEL.CLUSTERFORMER_BACKBONE.CLUSTERING_ITERATIONS == 3  # T = 3 for both sizes
    s = cfg.SOLVER
    assert s.OPTIMIZER == "ADAMW" and s.WEIGHT_DECAY == 0.05
    assert s.CLIP_GRADIENTS.ENABLED and s.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    if path.startswith("configs/imagenet"):
        # 300 epochs of 1,281,167 images at batch 1024, lr 1e-3 per 1024 images, 20 warm-up epochs.
        assert (s.IMS_PER_BATCH, s.BASE_LR, s.CLIP_GRADIENTS.CLIP_VALUE) == (1024, 1e-3, 5.0)
        assert s.MAX_ITER == math.ceil(1_281_167 * 300 / 1024)
        assert s.WARMUP_ITERS == pytest.approx(s.MAX_ITER * 20 / 300, rel=1e-3)
        c = cfg.INPUT.CLASSIFICATION
        assert (c.TRAIN_CROP, c.TEST_RESIZE, c.TEST_CROP, c.RANDOM_ERASING) == (224, 248, 224, 0.25)
        assert c.RAND_AUGMENT and cfg.MODEL.CLASSIFIER.NUM_CLASSES == 1000
        return
    d = cfg.MODEL.CLUSTER_DECODER
    assert (s.BASE_LR, s.BACKBONE_MULTIPLIER, s.CLIP_GRADIENTS.CLIP_VALUE) == (1e-4, 0.1, 0.01)
    assert (d.CROSS_ATTENTION, d.CLUSTERING_ITERATIONS, d.DEC_LAYERS) == ("clustering", 3, 9)
    assert (d.CLASS_WEIGHT, d.MASK_WEIGHT, d.DICE_WEIGHT, d.NO_OBJECT_WEIGHT) == (2, 5, 5, 0.1)
    assert (d.TRAIN_NUM_POINTS, d.OVERSAMPLE_RATIO, d.IMPORTANCE_SAMPLE_RATIO) == (12544, 3, 0.75)
    assert cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS == 6
    if path.startswith("configs/coco"):
        # 50 epochs of COCO train2017 (118k images) at batch 16, large-scale jitter at 1024.
        assert (s.IMS_PER_BATCH, s.MAX_ITER, cfg.INPUT.IMAGE_SIZE) == (16, 368750, 1024)
        assert d.NUM_OBJECT_QUERIES == 100
        panoptic = "panoptic" in path
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == (133 if panoptic else 80)
        assert (d.TEST.PANOPTIC_ON, d.TEST.INSTANCE_ON) == (panoptic, True)
        assert (d.TEST.OVERLAP_THRESHOLD, d.TEST.OBJECT_MASK_THRESHOLD) == (0.8, 0.8)
    else:
        assert (s.IMS_PER_BATCH, s.MAX_ITER, tuple(cfg.INPUT.CROP.SIZE)) == (16, 160000, (512, 512))
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150 and d.TEST.SEMANTIC_ON


def _segmentation_batch(num_classes: int):
    batch = []
    for i, (h, w) in enumerate(((64, 64), (48, 80))):
        inst = Instances((h, w))
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, : h // 2], masks[1, h // 2 :, : w // 3] = True, True
        inst.gt_masks = masks
        inst.gt_classes = torch.tensor([i, num_classes - 1])
        image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


@pytest.mark.parametrize("path", PAPER_CONFIGS)
def test_paper_config_builds_and_trains_one_step(path):
    # AMP is for the GPU; the checks and the step here run in fp32 on the CPU.
    cfg = load_config(
        os.path.join(REPO, path), ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "False"]
    )
    _check_recipe(cfg, path)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    model.train()
    if path.startswith("configs/imagenet"):
        images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
        batch = [{"image": image, "label": label} for image, label in zip(images, (3, 997))]
    else:
        batch = _segmentation_batch(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    optimizer = Trainer.build_optimizer(cfg, model)
    losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
