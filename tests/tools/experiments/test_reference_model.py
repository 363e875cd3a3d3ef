"""The published reference model (``make reference-model``) re-evaluates to the metrics documented in
docs/experiments/shapes_reference.json, on the 60 shapes val images."""

import json
import os

import pytest
import torch
from train_net_helpers import REPO

from clusterformer.d2.config_files import load_config
from clusterformer.engine import Trainer
from clusterformer.engine.checkpointer import ClusterFormerCheckpointer

CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano_reference.yaml"
WEIGHTS = "checkpoints/shapes/clusterformer_nano_shapes_panoptic.pth"
REPORT = "docs/experiments/shapes_reference.json"
# Metric points; other thread counts may flip a few borderline pixels.
TOLERANCE = 0.1


def documented() -> dict:
    with open(os.path.join(REPO, REPORT)) as f:
        return json.load(f)["published"]


def test_the_published_weights_are_the_whole_model_in_float16():
    cfg = load_config(os.path.join(REPO, CONFIG))
    saved = torch.load(os.path.join(REPO, WEIGHTS), weights_only=True)
    assert saved["__meta__"]["dtype"] == "float16" and saved["__meta__"]["kept"] == "model"
    assert saved["__meta__"]["source_iteration"] == cfg.SOLVER.MAX_ITER - 1
    model_keys = set(Trainer.build_model(cfg).state_dict())
    assert set(saved["model"]) == model_keys
    assert os.path.getsize(os.path.join(REPO, WEIGHTS)) < 8 * 2**20


@pytest.mark.slow
def test_the_published_model_reevaluates_to_its_documented_metrics(tmp_path):
    cfg = load_config(
        os.path.join(REPO, CONFIG),
        ["MODEL.WEIGHTS", os.path.join(REPO, WEIGHTS), "OUTPUT_DIR", str(tmp_path)],
    )
    model = Trainer.build_model(cfg).eval()
    ClusterFormerCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    results = Trainer.test(cfg, model)
    expected = documented()
    assert expected, f"{REPORT} documents no metric"
    for name, value in expected.items():
        task, key = name.split("/")
        assert results[task][key] == pytest.approx(value, abs=TOLERANCE), name
