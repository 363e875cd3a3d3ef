"""tools/deploy/export_model.py and ExportedPredictor on shapes models trained for this session
(tests/conftest.py): the exports' raw outputs match the eager model within 1e-4, and the
Detectron2 outputs made from them by the shared post-processing (panoptic PNG, segments,
semantic scores, instances) are those of ClusterFormerPredictor on validation images."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from train_net_helpers import CLS_CONFIG, PANOPTIC_CONFIG, REPO

from clusterformer import ClusterFormerPredictor, add_clusterformer_config
from clusterformer.data.image_io import read_image_uint8
from clusterformer.deploy.predictor import ExportedPredictor

TOLERANCE = 1e-4
NUM_VAL_IMAGES = 3
DETECTION_CONFIG = "configs/shapes/detection/clusterformer_nano.yaml"


def load_export_tool():
    spec = importlib.util.spec_from_file_location(
        "export_model", os.path.join(REPO, "tools", "deploy", "export_model.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_cfg(config_file: str, weights: str):
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.WEIGHTS", weights, "DATALOADER.NUM_WORKERS", "0"])
    return cfg


def run_export(config: str, weights: str, fmt: str, output: Path) -> Path:
    rc = load_export_tool().main(
        [
            "--config-file",
            config,
            "--format",
            fmt,
            "--output",
            str(output),
            "MODEL.WEIGHTS",
            weights,
        ]
    )
    assert rc == 0
    path = output / ("model.ts" if fmt == "torchscript" else "model.onnx")
    metadata = json.loads((output / (path.name + ".json")).read_text())
    diffs = metadata["extra"]["max_abs_diff_vs_eager"]
    assert diffs and max(diffs.values()) <= TOLERANCE, diffs
    return path


@pytest.fixture(scope="module")
def panoptic_exports(shapes_panoptic_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    return {
        fmt: run_export(PANOPTIC_CONFIG, shapes_panoptic_checkpoint, fmt, out / fmt)
        for fmt in ("torchscript", "onnx")
    }


def test_scripting_is_refused_with_the_reason(capsys):
    rc = load_export_tool().main(
        ["--config-file", PANOPTIC_CONFIG, "--format", "torchscript", "--output", "unused"]
        + ["--export-method", "scripting"]
    )
    assert rc == 2
    assert "torch.jit.script cannot compile" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_panoptic_model_gives_the_eager_predictor_outputs(
    fmt, panoptic_exports, shapes_panoptic_checkpoint
):
    cfg = make_cfg(PANOPTIC_CONFIG, shapes_panoptic_checkpoint)
    eager = ClusterFormerPredictor(cfg)
    exported = ExportedPredictor(cfg, panoptic_exports[fmt], num_threads=1)
    val = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:NUM_VAL_IMAGES]
    segments = 0
    for record in val:
        image = read_image_uint8(record["file_name"], "BGR")
        expected, actual = eager(image), exported(image)
        assert sorted(actual) == sorted(expected)
        seg, info = actual["panoptic_seg"]
        expected_seg, expected_info = expected["panoptic_seg"]
        assert torch.equal(seg, expected_seg), record["file_name"]
        assert [{k: v for k, v in s.items() if k != "score"} for s in info] == [
            {k: v for k, v in s.items() if k != "score"} for s in expected_info
        ]
        for s, e in zip(info, expected_info):
            assert abs(s["score"] - e["score"]) <= 1e-5
        segments += len(info)
        torch.testing.assert_close(actual["sem_seg"], expected["sem_seg"], rtol=0, atol=TOLERANCE)
        inst, expected_inst = actual["instances"], expected["instances"]
        assert torch.equal(inst.pred_classes, expected_inst.pred_classes)
        assert torch.equal(inst.pred_masks, expected_inst.pred_masks)
        torch.testing.assert_close(inst.scores, expected_inst.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            actual["cluster_assignment"], expected["cluster_assignment"], rtol=0, atol=TOLERANCE
        )
    assert segments > 0  # the comparison covered actual segments
    # A portrait image is padded to 160 x 128, not the exported 128 x 160: a clear error.
    portrait = read_image_uint8(val[0]["file_name"], "BGR").transpose(1, 0, 2).copy()
    with pytest.raises(ValueError, match=r"takes images of shape \[1, 3, 128, 160\] only"):
        exported(portrait)


@pytest.mark.slow
def test_exported_classifier_gives_the_eager_class_scores(
    shapes_classification_checkpoint, tmp_path
):
    path = run_export(CLS_CONFIG, shapes_classification_checkpoint, "onnx", tmp_path)
    cfg = make_cfg(CLS_CONFIG, shapes_classification_checkpoint)
    eager, exported = ClusterFormerPredictor(cfg), ExportedPredictor(cfg, path, num_threads=1)
    for record in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:NUM_VAL_IMAGES]:
        image = read_image_uint8(record["file_name"], "BGR")
        torch.testing.assert_close(
            exported(image)["class_scores"], eager(image)["class_scores"], rtol=0, atol=1e-5
        )


def load_demo():
    spec = importlib.util.spec_from_file_location(
        "clusterformer_demo_script", os.path.join(REPO, "demo", "demo.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "onnxruntime"], "needs the exported model"),
        (["--backend", "onnxruntime", "--export", "model.ts"], "runs .onnx files"),
        (["--export", "model.onnx"], "read by --backend torchscript / onnxruntime only"),
        (
            ["--backend", "torchscript", "--export", "model.ts", "--show-clusters"],
            "use --backend pytorch",
        ),
    ],
)
def test_demo_refuses_backend_combinations_it_cannot_run(extra, message, tmp_path):
    args = ["--config-file", PANOPTIC_CONFIG, "--input", str(tmp_path), *extra]
    with pytest.raises(ValueError, match=message):
        load_demo().main(args)


@pytest.mark.slow
def test_demo_runs_on_the_onnx_export(panoptic_exports, shapes_panoptic_checkpoint, tmp_path):
    cfg = make_cfg(PANOPTIC_CONFIG, shapes_panoptic_checkpoint)
    image = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"]
    summary = load_demo().main(
        ["--config-file", PANOPTIC_CONFIG, "--input", image, "--output", str(tmp_path)]
        + ["--backend", "onnxruntime", "--export", str(panoptic_exports["onnx"])]
        + ["--opts", "MODEL.WEIGHTS", shapes_panoptic_checkpoint]
    )
    assert not summary.failures and len(summary.processed) == 1
    assert summary.outputs and all(os.path.isfile(p) for p in summary.outputs)


@pytest.mark.slow
def test_exported_detector_gives_the_eager_detections(shapes_detection_checkpoint, tmp_path):
    """The box-only detector (pred_boxes, no masks) through TorchScript: the same detections."""
    path = run_export(DETECTION_CONFIG, shapes_detection_checkpoint, "torchscript", tmp_path)
    cfg = make_cfg(DETECTION_CONFIG, shapes_detection_checkpoint)
    eager, exported = ClusterFormerPredictor(cfg), ExportedPredictor(cfg, path)
    detections = 0
    for record in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:NUM_VAL_IMAGES]:
        image = read_image_uint8(record["file_name"], "BGR")
        expected, actual = eager(image)["instances"], exported(image)["instances"]
        assert torch.equal(actual.pred_classes, expected.pred_classes)
        torch.testing.assert_close(actual.scores, expected.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            actual.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=TOLERANCE
        )
        detections += len(expected)
    assert detections > 0
