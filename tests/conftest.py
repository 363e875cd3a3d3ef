"""Shared test set-up.

``tests/`` mirrors the repository: ``tests/modeling/backbone/test_backbone.py`` tests
``clusterformer/modeling/backbone/``, ``tests/tools/`` tests ``tools/``, ``tests/test_train_net.py``
tests ``train_net.py``; ``tests/support/`` holds what several tests import (on ``sys.path`` through
setup.cfg's ``pythonpath``). The modern environment has no detectron2: it does not collect the
tests of the Detectron2 layer, listed in ``NEEDS_DETECTRON2`` (a test missing from the list fails
there at collection, naming the import).

The session fixtures train shapes checkpoints once per session, through train_net.py as a user
does (``run_train_net``), briefly: the demo, predictor and export tests need real trained weights
of the right architecture, not accuracy. The panoptic recipe (batch 2, no warm-up, a higher
learning rate) is the cheapest one found after which the nano model already predicts object
classes and non-empty masks on photographs.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from train_net_helpers import CLS_CONFIG, PANOPTIC_CONFIG, run_train_net

os.environ.setdefault("MPLBACKEND", "Agg")

NEEDS_DETECTRON2 = [
    "d2/*",
    "engine/*",
    "demo/*",
    "datasets/*",
    "test_train_net*.py",
    "data/test_bad_inputs.py",
    "data/test_classification_data.py",
    "data/test_resumable_loader.py",
    "data/dataset_mappers/*",
    "data/datasets/test_custom_datasets*.py",
    "data/datasets/test_dataset_registration.py",
    "data/datasets/test_path_manager_io.py",
    "data/datasets/test_shapes_registration.py",
    "deploy/test_export_model.py",
    "tools/test_benchmark_train_step.py",
    "tools/test_benchmark_train_processes.py",
    "tools/experiments/test_reference_model.py",
    "tools/experiments/test_shapes_pretrained_weights.py",
]

collect_ignore_glob = [] if importlib.util.find_spec("detectron2") else NEEDS_DETECTRON2


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


DETECTION_CONFIG = "configs/shapes/detection/clusterformer_nano.yaml"


def _train_checkpoint(tmp_path_factory, name: str, config: str, *opts: str) -> str:
    """Train ``config`` through train_net.py with ``opts`` (no evaluation, no periodic
    checkpoint); return its ``model_final.pth``."""
    out = tmp_path_factory.mktemp(name)
    run_train_net(
        "--config-file",
        config,
        "OUTPUT_DIR",
        str(out),
        *opts,
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "DATALOADER.NUM_WORKERS",
        "0",
        # No evaluation at the end of training: these tests only need the weights.
        "DATASETS.TEST",
        "()",
    )
    path = out / "model_final.pth"
    assert path.is_file()
    return str(path)


@pytest.fixture(scope="session")
def shapes_panoptic_checkpoint(tmp_path_factory) -> str:
    """``model_final.pth`` of the shapes panoptic nano model after 40 iterations (after 20, whether
    it predicted any object class on a photograph depended on the thread count)."""
    return _train_checkpoint(
        tmp_path_factory,
        "shapes_panoptic",
        PANOPTIC_CONFIG,
        "SOLVER.MAX_ITER",
        "40",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.BASE_LR",
        "0.002",
        "SOLVER.WARMUP_ITERS",
        "0",
    )


@pytest.fixture(scope="session")
def shapes_classification_checkpoint(tmp_path_factory) -> str:
    """``model_final.pth`` of the shapes classifier after 5 iterations."""
    return _train_checkpoint(
        tmp_path_factory,
        "shapes_classification",
        CLS_CONFIG,
        "SOLVER.MAX_ITER",
        "5",
        "SOLVER.IMS_PER_BATCH",
        "8",
    )


@pytest.fixture(scope="session")
def shapes_detection_checkpoint(tmp_path_factory) -> str:
    """``model_final.pth`` of the box-only shapes detector after 10 iterations."""
    return _train_checkpoint(
        tmp_path_factory, "shapes_detection", DETECTION_CONFIG, "SOLVER.MAX_ITER", "10"
    )
