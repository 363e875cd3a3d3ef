"""MODEL.WEIGHTS with a Mask2Former checkpoint: its decoders are converted and loaded, its
backbone is skipped with a logged message (ClusterFormerCheckpointer)."""

from __future__ import annotations

import logging
import pickle
from typing import Dict

import numpy as np
import pytest
import torch

import clusterformer.engine.checkpointer as checkpointer_module
from clusterformer.d2.config_files import load_config
from clusterformer.engine import CheckpointMismatchError, ClusterFormerCheckpointer, Trainer
from clusterformer.modeling.mask2former_conversion import (
    to_detectron2_mask2former,
    to_transformers_mask2former,
)

BASE_CONFIG = "configs/shapes/Base-Shapes-PanopticSegmentation.yaml"
DECODERS = ("pixel_decoder.", "transformer_decoder.")


class RecordLogs(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def logs():
    handler = RecordLogs()
    loggers = [
        logging.getLogger(n) for n in ("fvcore.common.checkpoint", checkpointer_module.__name__)
    ]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)


def build(*opts: str):
    cfg = load_config(
        BASE_CONFIG, ["MODEL.CLUSTER_DECODER.CROSS_ATTENTION", "masked_attention", *opts]
    )
    torch.manual_seed(0)
    return cfg, Trainer.build_model(cfg)


def mask2former_checkpoint(model, seed: int = 1) -> Dict[str, np.ndarray]:
    """A small synthetic Detectron2 Mask2Former checkpoint that fits ``model``'s decoders: random
    values under Mask2Former's names, a Swin-like backbone and the criterion's buffer."""
    generator = torch.Generator().manual_seed(seed)
    ours = {
        k: torch.randn(v.shape, generator=generator)
        for k, v in model.state_dict().items()
        if k.startswith(DECODERS)
    }
    state = {k: v.numpy() for k, v in to_detectron2_mask2former(ours).items()}
    state["backbone.patch_embed.proj.weight"] = np.ones((96, 3, 4, 4), dtype=np.float32)
    state["backbone.layers.0.blocks.0.attn.qkv.weight"] = np.ones((288, 96), dtype=np.float32)
    state["criterion.empty_weight"] = np.ones(8, dtype=np.float32)
    return state, ours


def write_pkl(path, state, author: bool = True) -> str:
    data = {"model": state, "__author__": "Detectron2 Model Zoo"} if author else {"model": state}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return str(path)


@pytest.mark.parametrize("layout", ["pkl", "pkl-without-author", "pth"])
def test_model_weights_load_a_mask2former_checkpoint(tmp_path, logs, layout):
    cfg, model = build()
    state, expected = mask2former_checkpoint(model)
    if layout == "pth":
        path = str(tmp_path / "m2f.pth")
        torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    else:
        path = write_pkl(tmp_path / "m2f.pkl", state, author=layout == "pkl")
    backbone_before = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")
    }
    cfg.MODEL.WEIGHTS = path
    ClusterFormerCheckpointer.from_config(cfg, model).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )

    loaded = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    for key, value in backbone_before.items():
        assert torch.equal(loaded[key], value), key
    text = "\n".join(logs)
    assert "is a Mask2Former checkpoint (detectron2 names)" in text
    assert "skipped (not loaded): 2 backbone" in text and "1 loss buffer" in text
    # Detectron2's loader then lists the model's backbone as not found in the checkpoint.
    assert "backbone." in text


def test_model_weights_load_a_transformers_state_dict(tmp_path, logs):
    """``torch.save(Mask2FormerForUniversalSegmentation(...).state_dict())``: transformers' names."""
    cfg, model = build()
    _, expected = mask2former_checkpoint(model)
    state = to_transformers_mask2former(expected)
    state["model.pixel_level_module.encoder.embeddings.patch_embeddings.projection.weight"] = (
        torch.ones(96, 3, 4, 4)
    )
    state["criterion.empty_weight"] = torch.ones(8)
    path = str(tmp_path / "pytorch_model.bin")
    torch.save(state, path)
    ClusterFormerCheckpointer.from_config(cfg, model).resume_or_load(path, resume=False)
    loaded = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    text = "\n".join(logs)
    assert "is a Mask2Former checkpoint (transformers names)" in text
    assert "skipped (not loaded): 1 backbone" in text


def test_mask2former_checkpoint_of_another_depth_is_refused(tmp_path):
    _, six_layers = build()
    _, three_layers = build("MODEL.CLUSTER_DECODER.DEC_LAYERS", "3")
    path = write_pkl(tmp_path / "m2f.pkl", mask2former_checkpoint(three_layers)[0])
    with pytest.raises(CheckpointMismatchError) as info:
        ClusterFormerCheckpointer(six_layers).load(path)
    message = str(info.value)
    assert (
        "decoder weight(s) the file lacks: transformer_decoder.cross_attention_layers.3." in message
    )
    assert "MODEL.CLUSTER_DECODER.DEC_LAYERS 3" in message


def test_other_class_count_needs_skip_mismatched(tmp_path, logs):
    _, model = build()
    state, expected = mask2former_checkpoint(model)
    # A checkpoint trained on 9 classes (8 + "no object" rows -> 10).
    for name in ("weight", "bias"):
        key = f"sem_seg_head.predictor.class_embed.{name}"
        state[key] = np.ones((10,) + state[key].shape[1:], dtype=np.float32)
    path = write_pkl(tmp_path / "m2f.pkl", state)
    with pytest.raises(
        CheckpointMismatchError, match=r"class_embed.weight: \(10, 64\) in checkpoint"
    ):
        ClusterFormerCheckpointer(model).load(path)
    initial = model.state_dict()["transformer_decoder.prediction_heads.class_embed.weight"].clone()
    ClusterFormerCheckpointer(model, skip_mismatched=["class_embed"]).load(path)
    loaded = model.state_dict()
    assert torch.equal(loaded["transformer_decoder.prediction_heads.class_embed.weight"], initial)
    for key in ("transformer_decoder.query_feat.weight", "pixel_decoder.encoder.level_embed"):
        assert torch.equal(loaded[key], expected[key])


def test_clustering_decoder_started_from_mask2former_is_warned(tmp_path, logs):
    _, masked = build()
    cfg = load_config(BASE_CONFIG)
    clustering = Trainer.build_model(cfg)
    state, expected = mask2former_checkpoint(masked)
    ClusterFormerCheckpointer(clustering).load(write_pkl(tmp_path / "m2f.pkl", state))
    assert "another function" in "\n".join(logs)
    key = "transformer_decoder.cross_attention_layers.0.k_proj.weight"
    assert torch.equal(clustering.state_dict()[key], expected[key])


def test_clusterformer_checkpoints_are_not_converted(tmp_path, logs):
    _, model = build()
    path = str(tmp_path / "own.pth")
    torch.save({"model": model.state_dict()}, path)
    ClusterFormerCheckpointer(model).load(path)
    assert not any("Mask2Former" in m for m in logs)
