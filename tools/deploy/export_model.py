#!/usr/bin/env python
"""Export a trained ClusterFormer model to TorchScript or ONNX (Detectron2's export_model.py
style), and check the export against the eager model.

    python tools/deploy/export_model.py \\
        --config-file configs/shapes/panoptic-segmentation/clusterformer_nano.yaml \\
        --format onnx --export-method tracing --output exports/ \\
        MODEL.WEIGHTS output/shapes_panoptic/model_final.pth

Writes ``<output>/model.ts`` or ``<output>/model.onnx`` and its metadata ``<file>.json`` (input
shape, output names). The network is exported as tensors in, tensors out, on the normalised,
padded image of ``--sample-image`` (default: the first image of ``DATASETS.TEST[0]``, else a
synthetic one of ``--synthetic-size``) after the config's test transform; the export runs at that
input size only (docs/deployment.md says why). Then the export is run on the same input and its
largest absolute difference from the eager model is printed; the exit status is 1 when it
exceeds ``--tolerance``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog

from clusterformer import ClusterFormerPredictor, load_config
from clusterformer.data.image_io import read_image_uint8
from clusterformer.deploy import FORMATS, ExportedModel, eager_outputs, export
from clusterformer.deploy.export import DEFAULT_ONNX_OPSET, MIN_ONNX_OPSET

logger = logging.getLogger("clusterformer.export")

EXPORT_METHODS = ("tracing", "scripting")
SCRIPTING_UNSUPPORTED = (
    "--export-method scripting is not supported: the model's forward passes use Python "
    "dataclasses (the backbone's window geometry), **kwargs and dicts of optional tensors, which "
    "torch.jit.script cannot compile, and scripting would still not make the window geometry "
    "dynamic without rewriting it in tensor ops. Use --export-method tracing (an export per "
    "input size)."
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a ClusterFormer model to TorchScript or ONNX and check it"
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument("--format", required=True, choices=FORMATS, help="export format")
    parser.add_argument(
        "--export-method",
        default="tracing",
        choices=EXPORT_METHODS,
        help="tracing (the only supported method; scripting explains why not)",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--sample-image",
        metavar="FILE",
        help="image the export is traced on (its size after the test transform is the size the "
        "export accepts); default: the first image of DATASETS.TEST[0], else a synthetic image",
    )
    parser.add_argument(
        "--synthetic-size",
        nargs=2,
        type=int,
        default=(128, 160),
        metavar=("H", "W"),
        help="size of the synthetic sample image, used when there is no --sample-image and no "
        "test data set (default: 128 160)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_ONNX_OPSET,
        help=f"ONNX opset (>= {MIN_ONNX_OPSET}, default {DEFAULT_ONNX_OPSET})",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest absolute difference from the eager model accepted (default 1e-4)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config options as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    # load_config reads renamed and Mask2Former key names too (a saved run's config.yaml).
    cfg = load_config(args.config_file, args.opts)
    # Exports are made and checked on the CPU; ONNX Runtime runs them there too.
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def sample_image(cfg: CfgNode, args: argparse.Namespace) -> Tuple[np.ndarray, str, str]:
    """``(H, W, 3)`` uint8 sample image, its format ("BGR" / "RGB") and where it came from."""
    if args.sample_image:
        return read_image_uint8(args.sample_image, "BGR"), "BGR", args.sample_image
    for name in cfg.DATASETS.TEST:
        try:
            dicts = DatasetCatalog.get(name)
        except Exception as error:  # an unregistered or unavailable data set: try the next one
            logger.info("No sample image from %s (%s)", name, error)
            continue
        if dicts:
            path = dicts[0]["file_name"]
            return read_image_uint8(path, "BGR"), "BGR", path
    h, w = args.synthetic_size
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "BGR", f"synthetic {h}x{w}"


def model_input(predictor: ClusterFormerPredictor, image: np.ndarray, fmt: str) -> torch.Tensor:
    """The normalised, padded ``(1, 3, H, W)`` tensor the network sees for ``image``: the
    predictor's test transform and the model's own ``preprocess_images``."""
    inputs, _ = predictor.prepare_inputs(image, fmt)
    images = predictor.model.preprocess_images([inputs])
    return images if isinstance(images, torch.Tensor) else images.tensor


def max_abs_differences(
    exported: Dict[str, torch.Tensor], eager: Dict[str, torch.Tensor]
) -> Dict[str, float]:
    if list(exported) != list(eager):
        raise RuntimeError(f"export outputs {list(exported)} != eager outputs {list(eager)}")
    diffs = {}
    for name, ref in eager.items():
        out = exported[name]
        if tuple(out.shape) != tuple(ref.shape):
            raise RuntimeError(
                f"output {name}: export shape {tuple(out.shape)} != eager {tuple(ref.shape)}"
            )
        diffs[name] = float((out.float() - ref.float()).abs().max()) if ref.numel() else 0.0
    return diffs


def main(argv: List[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.export_method == "scripting":
        print(f"error: {SCRIPTING_UNSUPPORTED}", file=sys.stderr)
        return 2
    cfg = setup_cfg(args)
    predictor = ClusterFormerPredictor(cfg)
    image, fmt, source = sample_image(cfg, args)
    images = model_input(predictor, image, fmt)
    logger.info("Sample %s -> model input %s", source, list(images.shape))
    extra = {
        "config_file": args.config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "sample": source,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
    }
    # The reference is the eager model as given, before anything is traced.
    eager = eager_outputs(predictor.model, images)
    path, metadata = export(
        predictor.model, images, Path(args.output), args.format, opset=args.opset, extra=extra
    )
    logger.info("Wrote %s (%s, input %s)", path, args.format, metadata.input_shape)

    diffs = max_abs_differences(ExportedModel(path)(images), eager)
    metadata.extra["max_abs_diff_vs_eager"] = diffs
    metadata.save(path)
    for name, diff in diffs.items():
        logger.info("  %-18s max |export - eager| = %.3g", name, diff)
    worst = max(diffs.values())
    if worst > args.tolerance:
        print(
            f"error: the export differs from the eager model by {worst:.3g} > --tolerance "
            f"{args.tolerance}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
