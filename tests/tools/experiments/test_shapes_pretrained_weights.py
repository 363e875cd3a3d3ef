"""The pre-trained shapes backbone shipped in checkpoints/ and loaded by the `make run` config."""

import os

import torch
from train_net_helpers import PANOPTIC_CONFIG, REPO

from clusterformer.d2.config_files import load_config
from clusterformer.engine import Trainer
from clusterformer.engine.checkpointer import ClusterFormerCheckpointer

PRETRAIN_CONFIG = "configs/shapes/classification/clusterformer_nano_pretrain.yaml"


def test_the_make_run_model_starts_from_the_whole_pretrained_backbone():
    cfg = load_config(os.path.join(REPO, PANOPTIC_CONFIG))
    path = os.path.join(REPO, cfg.MODEL.WEIGHTS)
    assert os.path.isfile(path), f"{cfg.MODEL.WEIGHTS} is not in the repository"
    saved = torch.load(path, weights_only=True)
    assert saved["__meta__"]["dtype"] == "float16"
    weights = saved["model"]

    model = Trainer.build_model(cfg)
    own = model.state_dict()
    backbone = {k for k in own if k.startswith("backbone.")}
    # Every backbone tensor but the output norms of the stages the classifier does not return.
    assert set(weights) <= backbone
    assert backbone - set(weights) == {
        f"backbone.output_norms.res{i}.{p}" for i in (2, 3, 4) for p in ("weight", "bias")
    }
    ClusterFormerCheckpointer(model).load(path)
    loaded = model.state_dict()
    for name, value in weights.items():
        torch.testing.assert_close(loaded[name], value.float(), atol=0, rtol=0)


def test_the_weights_come_from_the_pretraining_config_architecture():
    """The classifier of the pre-training config has exactly the shipped backbone tensors."""
    cfg = load_config(os.path.join(REPO, PRETRAIN_CONFIG))
    classifier = Trainer.build_model(cfg).state_dict()
    weights = torch.load(
        os.path.join(REPO, "checkpoints/shapes/clusterformer_nano_shapes_cls.pth"),
        weights_only=True,
    )["model"]
    assert {k for k in classifier if k.startswith("backbone.")} == set(weights)
    assert all(classifier[k].shape == v.shape for k, v in weights.items())
