"""End-to-end runs of train_net.py on the shapes data set (subprocesses, as a user runs them;
helpers in train_net_helpers.py)."""

import pytest
from train_net_helpers import CLS_CONFIG, PANOPTIC_CONFIG, read_eval, read_metrics, run_train_net

pytestmark = pytest.mark.slow


def test_classifier_trains_and_is_evaluated(tmp_path):
    out = tmp_path / "cls"
    run_train_net(
        "--config-file",
        CLS_CONFIG,
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "6",
        "SOLVER.IMS_PER_BATCH",
        "8",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
    )
    results = read_eval(out)["classification"]
    assert results["num_images"] == 100  # the whole shapes_cls_val split, once
    assert 0.0 <= results["top1"] <= 100.0 and results["top5"] == 100.0  # 4 classes
    # The saved weights are the evaluated ones: --eval-only on them gives the same top-1.
    reloaded = tmp_path / "eval_only"
    run_train_net(
        "--config-file",
        CLS_CONFIG,
        "--eval-only",
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
        "OUTPUT_DIR",
        str(reloaded),
    )
    again = read_eval(reloaded)["classification"]
    assert (again["top1"], again["num_images"]) == (results["top1"], 100)


def test_two_process_cpu_training(tmp_path):
    """``--num-gpus 2`` with ``MODEL.DEVICE cpu``: two processes over gloo train and evaluate."""
    out = tmp_path / "ddp"
    proc = run_train_net(
        "--config-file",
        CLS_CONFIG,
        "--num-gpus",
        "2",
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.IMS_PER_BATCH",
        "8",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
    )
    log = proc.stdout + proc.stderr
    assert "world size: 2" in log.lower() or "Rank of current process: 1" in log, log[-3000:]
    assert (out / "model_final.pth").is_file()
    assert read_eval(out)["classification"]["num_images"] == 100


def test_panoptic_training_lowers_the_loss_and_all_evaluators_run(tmp_path):
    out = tmp_path / "pan"
    run_train_net(
        "--config-file",
        PANOPTIC_CONFIG,
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "40",
        "SOLVER.STEPS",
        "(1000,)",
        "SOLVER.CHECKPOINT_PERIOD",
        "20",
    )
    losses = [m["total_loss"] for m in read_metrics(out) if "total_loss" in m]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
    results = read_eval(out)
    assert {"panoptic_seg", "segm", "bbox", "sem_seg"} <= set(results), results.keys()
    assert 0.0 <= results["panoptic_seg"]["PQ"] <= 100.0
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0

    # --resume continues from the last checkpoint: iteration 40 -> 50.
    assert (out / "model_0000019.pth").is_file() and (out / "last_checkpoint").is_file()
    run_train_net(
        "--config-file",
        PANOPTIC_CONFIG,
        "--resume",
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "50",
        "SOLVER.STEPS",
        "(1000,)",
        "SOLVER.CHECKPOINT_PERIOD",
        "20",
    )
    iterations = [m["iteration"] for m in read_metrics(out) if "total_loss" in m]
    assert iterations[-1] == 49 and 40 < min(i for i in iterations if i > 39), iterations

    # --eval-only with the final weights reproduces the evaluation.
    eval_out = tmp_path / "eval"
    run_train_net(
        "--config-file",
        PANOPTIC_CONFIG,
        "--eval-only",
        "OUTPUT_DIR",
        str(eval_out),
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
    )
    assert read_eval(eval_out)["panoptic_seg"]["PQ"] == pytest.approx(
        read_eval(out)["panoptic_seg"]["PQ"], abs=1e-6
    )
