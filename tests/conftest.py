"""Shared test set-up.

``tests/core`` must pass without detectron2 (the modern environment runs only it);
``tests/d2`` tests the Detectron2 layer and is not collected where detectron2 is missing.
"""

import importlib.util
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

collect_ignore_glob = [] if importlib.util.find_spec("detectron2") else ["d2/*"]


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
