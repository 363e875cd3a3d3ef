"""Session fixtures of the Detectron2 tests: shapes-trained checkpoints made once per session.

They train through train_net.py as a user does (``run_train_net`` of test_train_net.py), briefly:
the demo and predictor tests need real trained weights of the right architecture, not accuracy.
The panoptic recipe (batch 2, no warm-up, a higher learning rate) is the cheapest one found after
which the nano model already predicts object classes and non-empty masks on photographs.
"""

from __future__ import annotations

import pytest
from test_train_net import CLS_CONFIG, PANOPTIC_CONFIG, run_train_net

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
