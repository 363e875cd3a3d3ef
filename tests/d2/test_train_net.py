"""End-to-end runs of train_net.py on the shapes data set (subprocesses, as a user runs them).

The shapes data set is generated once into the repository's ``datasets/`` (gitignored; shared by
every test and by ``make run``; generation is locked, so parallel tests wait for one another).
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLS_CONFIG = "configs/shapes/classification/clusterformer_nano.yaml"
PANOPTIC_CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"

pytestmark = pytest.mark.slow


def run_train_net(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"train_net.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-6000:]}"
        )
    return proc


def read_metrics(output_dir) -> list:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_eval(output_dir) -> dict:
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)


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
    assert (out / "model_final.pth").is_file()


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
