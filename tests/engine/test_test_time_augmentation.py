"""``TEST.AUG.ENABLED``: Mask2Former's semantic-segmentation test-time augmentation, refused for
every other task."""

from __future__ import annotations

import json
import os

import pytest
import torch
from detectron2.data import transforms as T
from train_net_helpers import CLS_CONFIG, PANOPTIC_CONFIG, REPO, read_metrics, run_train_net

from clusterformer.d2.config_files import load_config
from clusterformer.engine import ClusterFormerCheckpointer, Trainer
from clusterformer.engine.test_time_augmentation import (
    SemanticSegmentorWithTTA,
    check_test_augmentation,
)
from clusterformer.engine.trainer import check_config

DETECTION_CONFIG = "configs/shapes/detection/clusterformer_nano.yaml"
REFERENCE_CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano_reference.yaml"
REFERENCE_WEIGHTS = "checkpoints/shapes/clusterformer_nano_shapes_panoptic.pth"
SEMANTIC_ONLY = (
    "MODEL.CLUSTER_DECODER.TEST.PANOPTIC_ON",
    "False",
    "MODEL.CLUSTER_DECODER.TEST.INSTANCE_ON",
    "False",
    "MODEL.DEVICE",
    "cpu",
)
# A test-mapper output: the image resized to 91 x 128 from an original of 100 x 140.
IMAGE_SIZE, ORIGINAL_SIZE = (91, 128), (100, 140)


def semantic_cfg(*opts: str):
    """The published reference model's config, returning semantic segmentation only."""
    return load_config(
        os.path.join(REPO, REFERENCE_CONFIG), [*SEMANTIC_ONLY, "TEST.AUG.ENABLED", "True", *opts]
    )


@pytest.fixture(scope="module")
def model():
    """The published reference model (trained: its scores depend on where the objects are)."""
    model = Trainer.build_model(semantic_cfg()).eval()
    ClusterFormerCheckpointer(model).load(os.path.join(REPO, REFERENCE_WEIGHTS))
    return model


def mapped_input(image: torch.Tensor) -> dict:
    return {"image": image, "height": ORIGINAL_SIZE[0], "width": ORIGINAL_SIZE[1]}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, *IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    image[:, 20:60, 10:50] = 255  # an object left of centre: the image is not symmetric
    return image


def tta(model, *opts: str) -> SemanticSegmentorWithTTA:
    return SemanticSegmentorWithTTA(semantic_cfg(*opts), model).eval()


def test_one_scale_without_flip_is_the_model(model, image):
    wrapped = tta(model, "TEST.AUG.MIN_SIZES", f"({IMAGE_SIZE[0]},)", "TEST.AUG.FLIP", "False")
    with torch.no_grad():
        plain = model([mapped_input(image)])[0]["sem_seg"]
        augmented = wrapped([mapped_input(image)])
    assert list(augmented[0]) == ["sem_seg"]
    assert augmented[0]["sem_seg"].shape == (7, *ORIGINAL_SIZE)
    assert torch.equal(augmented[0]["sem_seg"], plain)


def test_flipped_scores_are_mirrored_back(model, image):
    """With the identity and its mirror image as the augmentations, the augmented scores of the
    mirrored image are exactly the mirrored scores of the image (a missing or wrong flip-back
    breaks this: the model itself is not mirror-symmetric)."""
    wrapped = tta(model, "TEST.AUG.MIN_SIZES", f"({IMAGE_SIZE[0]},)", "TEST.AUG.FLIP", "True")
    with torch.no_grad():
        scores = wrapped([mapped_input(image)])[0]["sem_seg"]
        mirrored = wrapped([mapped_input(image.flip(2))])[0]["sem_seg"]
        plain = model([mapped_input(image)])[0]["sem_seg"]
        plain_mirrored = model([mapped_input(image.flip(2))])[0]["sem_seg"]
    assert not torch.allclose(plain_mirrored, plain.flip(2), atol=1e-3)  # a real test
    assert torch.equal(mirrored, scores.flip(2))
    assert torch.allclose(scores, (plain + plain_mirrored.flip(2)) / 2, atol=1e-6)


def test_scales_are_averaged_on_the_original_grid(model, image):
    wrapped = tta(model, "TEST.AUG.MIN_SIZES", f"({IMAGE_SIZE[0]}, 60)", "TEST.AUG.FLIP", "False")
    resized = T.ResizeShortestEdge(60, 4000).get_transform(image.permute(1, 2, 0).numpy())
    small = torch.from_numpy(resized.apply_image(image.permute(1, 2, 0).numpy()).copy())
    small = small.permute(2, 0, 1)
    assert small.shape[1] == 60
    with torch.no_grad():
        scores = wrapped([mapped_input(image)])[0]["sem_seg"]
        expected = (
            model([mapped_input(image)])[0]["sem_seg"] + model([mapped_input(small)])[0]["sem_seg"]
        ) / 2
    assert scores.shape == (7, *ORIGINAL_SIZE)
    assert torch.allclose(scores, expected, atol=1e-6)


@pytest.mark.parametrize(
    "config, opts, message",
    [
        (PANOPTIC_CONFIG, (), r"PANOPTIC_ON, MODEL\.CLUSTER_DECODER\.TEST\.INSTANCE_ON are on"),
        (
            PANOPTIC_CONFIG,
            ("MODEL.CLUSTER_DECODER.TEST.PANOPTIC_ON", "False"),
            r"TEST\.INSTANCE_ON is on",
        ),
        (DETECTION_CONFIG, (), r"DETECTION_ON is on"),
        (CLS_CONFIG, (), r"MODEL\.META_ARCHITECTURE='ClusterFormerClassifier'"),
        (
            PANOPTIC_CONFIG,
            (*SEMANTIC_ONLY, "MODEL.CLUSTER_DECODER.TEST.SEMANTIC_ON", "False"),
            r"SEMANTIC_ON \(and MASK_ON\) must be on",
        ),
    ],
)
def test_unsupported_tasks_are_refused_naming_the_key(config, opts, message):
    cfg = load_config(os.path.join(REPO, config), [*opts, "TEST.AUG.ENABLED", "True"])
    with pytest.raises(ValueError, match=r"TEST\.AUG\.ENABLED=True") as error:
        check_config(cfg)
    assert error.match(message)
    with pytest.raises(ValueError, match=r"TEST\.AUG\.ENABLED"):
        Trainer(cfg)
    # Off, the same config is accepted.
    cfg.TEST.AUG.ENABLED = False
    check_test_augmentation(cfg)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match=r"TEST\.AUG\.MIN_SIZES=\(\)"):
        check_config(semantic_cfg("TEST.AUG.MIN_SIZES", "()"))
    with pytest.raises(ValueError, match=r"TEST\.AUG\.MAX_SIZE=0"):
        check_config(semantic_cfg("TEST.AUG.MAX_SIZE", "0"))


@pytest.mark.slow
def test_eval_only_refuses_a_panoptic_model(tmp_path):
    proc = run_train_net(
        "--config-file",
        PANOPTIC_CONFIG,
        "--eval-only",
        "OUTPUT_DIR",
        str(tmp_path),
        "TEST.AUG.ENABLED",
        "True",
        expect_returncode=1,
        timeout=300,
    )
    assert "TEST.AUG.ENABLED=True" in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "eval_results.json")


@pytest.mark.slow
def test_training_and_eval_only_report_both_evaluations(tmp_path):
    """One iteration from the published reference weights, then its evaluation with and without
    augmentation (eval_results.json, metrics.json); --eval-only of the result gives the same two."""
    tta_opts = (
        *SEMANTIC_ONLY,
        "TEST.AUG.ENABLED",
        "True",
        "TEST.AUG.MIN_SIZES",
        "(96, 128)",
        "TEST.AUG.MAX_SIZE",
        "160",
        "TEST.AUG.FLIP",
        "True",
    )
    env = {"OMP_NUM_THREADS": "1"}
    trained = tmp_path / "train"
    run_train_net(
        "--config-file",
        REFERENCE_CONFIG,
        *tta_opts,
        "MODEL.WEIGHTS",
        REFERENCE_WEIGHTS,
        "OUTPUT_DIR",
        str(trained),
        "SOLVER.MAX_ITER",
        "1",
        "SOLVER.BASE_LR",
        "0.0",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "TEST.EVAL_PERIOD",
        "0",
        "DATALOADER.NUM_WORKERS",
        "0",
        env=env,
    )
    with open(trained / "eval_results.json") as f:
        results = json.load(f)
    assert set(results) == {"sem_seg", "sem_seg_TTA"}, results.keys()
    plain, augmented = results["sem_seg"]["mIoU"], results["sem_seg_TTA"]["mIoU"]
    # Measured on these weights: mIoU 87.36 plain, 88.99 augmented, and 54.49 when the mirrored
    # copies' scores are averaged without being mirrored back (objects on the wrong side).
    assert augmented > plain - 3.0, (plain, augmented)
    assert augmented != plain  # the augmentations were used
    assert os.path.isdir(trained / "inference_TTA" / "shapes_panoptic_val")
    last = [m for m in read_metrics(trained) if "sem_seg_TTA/mIoU" in m]
    assert last and last[-1]["sem_seg_TTA/mIoU"] == pytest.approx(augmented)

    evaluated = tmp_path / "eval_only"
    run_train_net(
        "--config-file",
        REFERENCE_CONFIG,
        "--eval-only",
        *tta_opts,
        "MODEL.WEIGHTS",
        str(trained / "model_final.pth"),
        "OUTPUT_DIR",
        str(evaluated),
        env=env,
    )
    with open(evaluated / "eval_results.json") as f:
        again = json.load(f)
    assert set(again) == {"sem_seg", "sem_seg_TTA"}
    assert again["sem_seg_TTA"]["mIoU"] == pytest.approx(augmented, abs=1e-6)
    assert again["sem_seg"]["mIoU"] == pytest.approx(plain, abs=1e-6)
