"""Interrupted, repeated and distributed training runs give the losses of one uninterrupted run.

All runs train the nano classifier on the shapes classification split for 12 iterations with the
config's random augmentation on (RandomResizedCrop + flip), logging every iteration's own losses
(``SOLVER.LOG_PERIOD 1``). The reference run is compared, iteration by iteration, with

* an interrupted chain: SIGTERM at iteration 5 (checkpoint saved on the signal), ``--resume``
  killed by SIGKILL at iteration 9 (last periodic checkpoint: iteration 7), ``--resume`` to the
  end; with 2, 1 and 0 data-loader workers in turn (the reference has 0);
* the same config on two processes (gloo, ``--num-gpus 2``) with the same total batch.

The panoptic segmenter (point-sampled losses, random augmentation)
gets the same determinism and resume checks on a shorter run.

One thread per process (``OMP_NUM_THREADS=1``): the reference and the two-process run then use the
same CPU kernels, and the shared 2-core machine is not oversubscribed.
"""

from __future__ import annotations

import math
import os

import pytest
from train_net_helpers import (
    CLS_CONFIG,
    FAULT_INJECTION_SCRIPT,
    PANOPTIC_CONFIG,
    read_metrics,
    run_train_net,
)

pytestmark = pytest.mark.slow

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MAX_ITER = 12
COMMON = (
    "--config-file",
    CLS_CONFIG,
    "SOLVER.MAX_ITER",
    str(MAX_ITER),
    "SOLVER.IMS_PER_BATCH",
    "8",
    "SOLVER.WARMUP_ITERS",
    "2",
    "SOLVER.CHECKPOINT_PERIOD",
    "4",
    "SOLVER.LOG_PERIOD",
    "1",
    "DATASETS.TEST",
    "()",
    "SEED",
    "7",
)
SIGTERM_EXIT = 128 + 15
SIGKILLED = -9


def losses_by_iteration(metrics: list) -> dict:
    """``{iteration: (total_loss, lr)}``; checks that repeated iterations logged the same values."""
    by_iteration = {}
    for entry in metrics:
        if "total_loss" not in entry:
            continue
        values = (entry["total_loss"], entry["lr"])
        previous = by_iteration.setdefault(entry["iteration"], values)
        assert previous == values, (entry["iteration"], previous, values)
    return by_iteration


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run_train_net(*COMMON, "OUTPUT_DIR", str(out), "DATALOADER.NUM_WORKERS", "0", env=ONE_THREAD)
    losses = losses_by_iteration(read_metrics(out))
    assert sorted(losses) == list(range(MAX_ITER))
    return losses


def test_interrupted_runs_resume_with_the_same_losses(reference, tmp_path):
    out = str(tmp_path / "interrupted")

    # SIGTERM during iteration 5: the run finishes it, saves model_0000005.pth and exits 143.
    proc = run_train_net(
        *COMMON,
        "OUTPUT_DIR",
        out,
        "DATALOADER.NUM_WORKERS",
        "2",
        script=FAULT_INJECTION_SCRIPT,
        script_args=("--fault", "sigterm@5", "--"),
        expect_returncode=SIGTERM_EXIT,
        env=ONE_THREAD,
    )
    assert "Stopped by signal 15 after iteration 5" in proc.stdout + proc.stderr
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read() == "model_0000005.pth"
    first = losses_by_iteration(read_metrics(out))
    assert sorted(first) == list(range(6))
    # Determinism: a second run of the same config (here with 2 workers) logs the same losses.
    for iteration, values in first.items():
        assert values == reference[iteration], iteration

    # --resume continues at 6; SIGKILL at the start of iteration 9 (nothing saved then).
    run_train_net(
        "--resume",
        *COMMON,
        "OUTPUT_DIR",
        out,
        "DATALOADER.NUM_WORKERS",
        "1",
        script=FAULT_INJECTION_SCRIPT,
        script_args=("--fault", "sigkill@9", "--"),
        expect_returncode=SIGKILLED,
        env=ONE_THREAD,
    )
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read() == "model_0000007.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))

    # --resume from iteration 7's checkpoint to the end.
    run_train_net(
        "--resume", *COMMON, "OUTPUT_DIR", out, "DATALOADER.NUM_WORKERS", "0", env=ONE_THREAD
    )
    metrics = read_metrics(out)
    iterations = [m["iteration"] for m in metrics if "total_loss" in m]
    # The three runs: 0..5, 6..8 (killed before 9), 8..11 (resumed after 7).
    assert iterations == list(range(6)) + [6, 7, 8] + [8, 9, 10, 11], iterations
    resumed = losses_by_iteration(metrics)  # also checks that iteration 8 repeated exactly
    assert resumed == reference
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def test_two_processes_match_one_process_with_the_same_total_batch(reference, tmp_path):
    """Two gloo processes with 4 images each see the images and augmentations of one process with
    8 (the loader seeds each sample by its global stream position, not by rank), and DDP averages
    their gradients, which for this mean loss equals the one-process gradient. What differs is
    float summation order in the all-reduce: 1e-5 bounds it over 12 AdamW steps (measured: 2.4e-7).
    """
    out = tmp_path / "ddp"
    proc = run_train_net(
        "--num-gpus",
        "2",
        *COMMON,
        "OUTPUT_DIR",
        str(out),
        "DATALOADER.NUM_WORKERS",
        "0",
        env=ONE_THREAD,
    )
    assert "World size: 2" in proc.stdout + proc.stderr
    two_processes = losses_by_iteration(read_metrics(out))
    assert sorted(two_processes) == list(range(MAX_ITER))
    for iteration, (loss, lr) in two_processes.items():
        assert math.isclose(loss, reference[iteration][0], rel_tol=0, abs_tol=1e-5), iteration
        assert lr == pytest.approx(reference[iteration][1], rel=1e-12)
    # The runs are not trivially equal: the losses change from iteration to iteration.
    assert len({round(loss, 4) for loss, _ in reference.values()}) > MAX_ITER // 2


def test_nan_loss_stops_training_naming_iteration_and_terms(tmp_path):
    out = tmp_path / "nan"
    proc = run_train_net(
        *COMMON,
        "OUTPUT_DIR",
        str(out),
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        script=FAULT_INJECTION_SCRIPT,
        script_args=("--fault", "nan@3", "--"),
        expect_returncode=1,
        env=ONE_THREAD,
    )
    log = proc.stdout + proc.stderr
    assert "FloatingPointError: Loss became infinite or NaN at iteration=3" in log, log[-3000:]
    assert "'loss_cls': nan" in log
    # Training stopped at the NaN: no checkpoint after iteration 1's, no final model.
    with open(out / "last_checkpoint") as f:
        assert f.read() == "model_0000001.pth"
    assert not (out / "model_final.pth").exists()


def test_segmenter_is_deterministic_and_resumes_with_the_same_losses(tmp_path):
    """Every random draw of the model (the point sampling) is seeded per iteration, and
    the loader's by stream position, so a repeated run and a SIGTERM + ``--resume`` chain log
    the reference run's losses exactly."""
    common = (
        "--config-file",
        PANOPTIC_CONFIG,
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.CHECKPOINT_PERIOD",
        "100",
        "SOLVER.LOG_PERIOD",
        "1",
        "DATASETS.TEST",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SEED",
        "3",
    )
    runs = {}
    for name in ("reference", "repeat"):
        out = tmp_path / name
        run_train_net(*common, "OUTPUT_DIR", str(out), env=ONE_THREAD)
        runs[name] = losses_by_iteration(read_metrics(out))
    assert sorted(runs["reference"]) == [0, 1, 2, 3]
    assert runs["repeat"] == runs["reference"]
    out = str(tmp_path / "interrupted")
    run_train_net(
        *common,
        "OUTPUT_DIR",
        out,
        script=FAULT_INJECTION_SCRIPT,
        script_args=("--fault", "sigterm@1", "--"),
        expect_returncode=SIGTERM_EXIT,
        env=ONE_THREAD,
    )
    run_train_net("--resume", *common, "OUTPUT_DIR", out, env=ONE_THREAD)
    assert losses_by_iteration(read_metrics(out)) == runs["reference"]
