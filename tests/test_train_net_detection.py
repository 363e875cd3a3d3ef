"""End-to-end shapes runs of train_net.py with boxes: a box-only detector and instance
segmentation with predicted boxes, each trained briefly and evaluated by COCOEvaluator."""

import pytest
from train_net_helpers import read_eval, read_metrics, run_train_net

DETECTION_CONFIG = "configs/shapes/detection/clusterformer_nano.yaml"
INSTANCE_BOXES_CONFIG = "configs/shapes/instance-segmentation/clusterformer_nano_boxes.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread_per_process(monkeypatch):
    # The subprocess inherits it: on a loaded machine, 2 OpenMP threads per process spin far
    # more than they compute.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_detector_trains_and_reports_box_ap(tmp_path):
    out = tmp_path / "det"
    run_train_net(
        "--config-file",
        DETECTION_CONFIG,
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "20",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
    )
    metrics = [m for m in read_metrics(out) if "total_loss" in m]
    assert metrics and {"loss_bbox", "loss_giou", "loss_ce"} <= set(metrics[-1])
    assert not any(k.startswith(("loss_mask", "loss_dice")) for k in metrics[-1])
    results = read_eval(out)
    assert set(results) == {"bbox"}, results.keys()
    assert 0.0 <= results["bbox"]["AP"] <= 100.0 and 0.0 <= results["bbox"]["AP50"] <= 100.0


def test_instance_segmentation_with_boxes_reports_bbox_and_segm(tmp_path):
    out = tmp_path / "inst"
    run_train_net(
        "--config-file",
        INSTANCE_BOXES_CONFIG,
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
    )
    metrics = [m for m in read_metrics(out) if "total_loss" in m]
    assert {"loss_bbox", "loss_giou", "loss_mask", "loss_dice"} <= set(metrics[-1])
    results = read_eval(out)
    assert {"bbox", "segm"} <= set(results), results.keys()
    assert 0.0 <= results["bbox"]["AP"] <= 100.0 and 0.0 <= results["segm"]["AP"] <= 100.0
