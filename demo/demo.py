#!/usr/bin/env python
"""ClusterFormer demo: predictions and cluster maps on images, videos and a webcam.

    python demo/demo.py --config-file configs/shapes/panoptic-segmentation/clusterformer_nano.yaml \
        --input photos/ "more/*.jpg" --output out/ --show-clusters \
        --opts MODEL.WEIGHTS output/shapes_panoptic/model_final.pth

See docs/demo.md for every option. The exit status is 0 when every input was processed, 1 when
some inputs could not be read or processed (they are listed at the end), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import tqdm
from detectron2.config import CfgNode, get_cfg
from detectron2.utils.logger import setup_logger

from clusterformer import ClusterFormerPredictor, add_clusterformer_config
from clusterformer.data.datasets.user_registration import REGISTER_HELP, run_registration_files
from clusterformer.modeling.backbone.clusterformer import STAGE_NAMES
from clusterformer.predictor import TASKS, enable_task_outputs, infer_task
from clusterformer.utils.image_io import UnreadableImageError, read_image_uint8
from clusterformer.utils.visualizer import PredictionVisualizer, render_cluster_maps

WINDOW_NAME = "ClusterFormer"
# What runs the network (--backend): the eager model or an export of tools/deploy/export_model.py.
BACKENDS = ("pytorch", "torchscript", "onnxruntime")
# Extensions OpenCV writes; outputs of other inputs (GIF, ...) are written as PNG.
WRITABLE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Unreadable frames tolerated in a row before a video is considered finished.
MAX_CONSECUTIVE_BAD_FRAMES = 5

logger = logging.getLogger("clusterformer.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="ClusterFormer demo: draw predictions (and cluster maps) on images or videos"
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument(
        "--register", action="append", default=[], metavar="FILE", help=REGISTER_HELP
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        help="image files, folders (every file in them) or glob patterns ('imgs/*.jpg')",
    )
    source.add_argument("--video-input", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the first webcam")
    parser.add_argument(
        "--output",
        help="a folder (created if needed) or, for a single image or a video, a file name; "
        "without it the results are shown in a window",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="what to draw (default: inferred from the config: a classifier -> classification, "
        "else panoptic, instance or semantic, whichever the config enables first)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="instances and panoptic thing segments scoring below it are not drawn",
    )
    parser.add_argument(
        "--show-clusters",
        action="store_true",
        help="also write <name>_clusters_<stage>.png: each pixel's cluster in the chosen "
        "backbone stages and in the decoder (images only)",
    )
    parser.add_argument(
        "--cluster-stages",
        nargs="+",
        default=["res2", "res3"],
        choices=STAGE_NAMES,
        help="backbone stages drawn by --show-clusters (the decoder is added when the model has one)",
    )
    parser.add_argument(
        "--cluster-head", type=int, default=0, help="the backbone head whose clusters are drawn"
    )
    parser.add_argument(
        "--no-cluster-labels",
        action="store_true",
        help="do not label the decoder's clusters with their queries' predicted classes",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="pytorch",
        help="what runs the network: the eager model (pytorch, default) or an export of "
        "tools/deploy/export_model.py (torchscript, onnxruntime; give it with --export); the "
        "pre- and post-processing are the same",
    )
    parser.add_argument(
        "--export",
        metavar="FILE",
        help="the .ts (torchscript) or .onnx (onnxruntime) file for --backend; it runs at the "
        "input size it was exported at only (docs/deployment.md)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def setup_cfg(args: argparse.Namespace) -> Tuple[CfgNode, str]:
    """The config of ``--config-file`` + ``--opts`` with the outputs of the task enabled."""
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    task = args.task or infer_task(cfg)
    return enable_task_outputs(cfg, task), task


@dataclass
class VideoReport:
    """What happened to one video: frames written vs frames the container announced."""

    source: str
    output: Optional[str]
    frames_written: int
    frames_expected: int
    fps: float
    size: Tuple[int, int]  # (width, height)

    @property
    def complete(self) -> bool:
        return self.frames_expected <= 0 or self.frames_written >= self.frames_expected


@dataclass
class DemoSummary:
    """The result of a demo run (returned by :func:`main`)."""

    outputs: List[str] = field(default_factory=list)  # files written
    processed: List[str] = field(default_factory=list)  # inputs that went through
    failures: List[Tuple[str, str]] = field(default_factory=list)  # (input, reason)
    videos: List[VideoReport] = field(default_factory=list)


def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Files, folders (their files, sorted, hidden ones skipped) and glob patterns -> (the files
    to process, [(pattern, reason)] for patterns that name nothing)."""
    files: List[str] = []
    missing: List[Tuple[str, str]] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            names = sorted(n for n in os.listdir(pattern) if not n.startswith("."))
            files.extend(
                os.path.join(pattern, n) for n in names if os.path.isfile(os.path.join(pattern, n))
            )
        elif os.path.isfile(pattern):
            files.append(pattern)
        else:
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if matches:
                files.extend(matches)
            else:
                missing.append((pattern, "no such file, folder or matching pattern"))
    return files, missing


def output_is_folder(output: str) -> bool:
    """``--output`` names a folder when it exists as one, ends with a separator or has no file
    extension; else it is the file to write (one input only)."""
    return (
        os.path.isdir(output) or output.endswith(("/", os.sep)) or not os.path.splitext(output)[1]
    )


def image_output_path(input_path: str, output: str, folder: bool) -> str:
    if not folder:
        return output
    stem, suffix = os.path.splitext(os.path.basename(input_path))
    if suffix.lower() not in WRITABLE_IMAGE_SUFFIXES:
        suffix = ".png"
    return os.path.join(output, stem + suffix)


def write_rgb(path: str, image_rgb: np.ndarray) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(image_rgb[:, :, ::-1])):
        raise OSError(f"OpenCV could not write {path!r} (unsupported extension or folder?)")


class NoDisplayError(Exception):
    """Results were to be shown, but OpenCV cannot open a window (stops the whole run)."""


def show_bgr(image_bgr: np.ndarray, wait_ms: int) -> int:
    """Show an image in the demo window; returns the key pressed (-1: none)."""
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
        cv2.imshow(WINDOW_NAME, image_bgr)
        return cv2.waitKey(wait_ms)
    except cv2.error as error:
        raise NoDisplayError(
            "Cannot open a window (headless OpenCV or no display); pass --output to write files"
        ) from error


class Demo:
    """Runs the predictor and the visualiser over the inputs of one demo invocation."""

    def __init__(self, cfg: CfgNode, task: str, args: argparse.Namespace):
        self.task = task
        self.args = args
        if args.backend == "pytorch":
            self.predictor = ClusterFormerPredictor(
                cfg, confidence_threshold=args.confidence_threshold
            )
        else:
            from clusterformer.deploy.predictor import ExportedPredictor

            self.predictor = ExportedPredictor(
                cfg, args.export, confidence_threshold=args.confidence_threshold
            )
        self.metadata = self.predictor.metadata
        self.summary = DemoSummary()
        if args.show_clusters:
            check_cluster_head(self.predictor, args.cluster_stages, args.cluster_head)

    # ---- images ---------------------------------------------------------------------------
    def run_on_images(
        self, files: Sequence[str], missing: Sequence[Tuple[str, str]], output: Optional[str]
    ) -> None:
        """Process image ``files``; ``missing`` (inputs that named nothing) count as failures."""
        self.summary.failures.extend(missing)
        for name, reason in missing:
            logger.error("%s: %s", name, reason)
        folder = output is not None and output_is_folder(output)
        visualizer = PredictionVisualizer(self.metadata, self.task)
        for path in tqdm.tqdm(files, disable=len(files) < 2, unit="image"):
            try:
                self.process_image(path, visualizer, output, folder)
            except (UnreadableImageError, ValueError, RuntimeError, OSError) as error:
                # One bad input must not stop a folder: report it and go on.
                logger.error("%s: %s", path, error)
                self.summary.failures.append((path, str(error)))

    def process_image(
        self,
        path: str,
        visualizer: PredictionVisualizer,
        output: Optional[str],
        folder: bool,
    ) -> None:
        image_bgr = read_image_uint8(path, format="BGR")
        start = time.perf_counter()
        if self.args.show_clusters:
            outputs, maps = self.predictor.predict_with_clusters(image_bgr, format="BGR")
        else:
            outputs, maps = self.predictor(image_bgr, format="BGR"), None
        logger.info("%s: %s in %.2fs", path, describe(outputs), time.perf_counter() - start)
        image_rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        drawn = visualizer.draw(image_rgb, outputs)
        pictures = {}
        if maps is not None:
            pictures = render_cluster_maps(
                image_rgb,
                maps,
                self.args.cluster_stages,
                head=self.args.cluster_head,
                metadata=self.metadata,
                label_queries=not self.args.no_cluster_labels,
            )
        if output is None:
            for picture in [drawn, *pictures.values()]:
                if show_bgr(picture[:, :, ::-1], 0) == 27:  # Esc
                    break
        else:
            out_path = image_output_path(path, output, folder)
            write_rgb(out_path, drawn)
            self.summary.outputs.append(out_path)
            stem = os.path.splitext(out_path)[0]
            for name, picture in pictures.items():
                cluster_path = f"{stem}_clusters_{name}.png"
                write_rgb(cluster_path, picture)
                self.summary.outputs.append(cluster_path)
        self.summary.processed.append(path)

    # ---- videos ---------------------------------------------------------------------------
    def run_on_video(self, source: str, capture: cv2.VideoCapture, output: Optional[str]) -> None:
        """Draw every frame of ``capture``; write them to a video (same size and frame rate) or
        show them. Frames already written are kept whatever happens later (the writer is
        released in all cases), and the report compares them with the announced count."""
        if not capture.isOpened():
            raise UnreadableImageError(f"Cannot open the video {source!r}")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if not math.isfinite(fps) or fps <= 0:
            logger.warning("%s announces no frame rate; writing at 30 fps", source)
            fps = 30.0
        if self.args.show_clusters:
            logger.warning("--show-clusters draws images only; ignored for videos")
        writer = None
        out_path = None
        if output is not None:
            out_path = output
            if output_is_folder(output):
                stem = os.path.splitext(os.path.basename(source))[0] or "webcam"
                out_path = os.path.join(output, stem + ".mp4")
            os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
            writer = cv2.VideoWriter(
                out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True
            )
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot write the video {out_path!r} (mp4v)")
        visualizer = PredictionVisualizer(self.metadata, self.task, video=True)
        written = 0
        progress = tqdm.tqdm(total=expected if expected > 0 else None, unit="frame")
        try:
            for frame in read_frames(capture, expected, source):
                drawn = visualizer.draw(
                    np.ascontiguousarray(frame[:, :, ::-1]), self.predictor(frame)
                )
                drawn_bgr = np.ascontiguousarray(drawn[:, :, ::-1])
                if drawn_bgr.shape[:2] != (height, width):
                    # VideoWriter silently drops frames of another size.
                    drawn_bgr = cv2.resize(drawn_bgr, (width, height))
                if writer is not None:
                    writer.write(drawn_bgr)
                elif show_bgr(drawn_bgr, 1) == 27:
                    break
                written += 1
                progress.update(1)
        finally:
            progress.close()
            if writer is not None:
                writer.release()
            capture.release()
        report = VideoReport(source, out_path, written, expected, fps, (width, height))
        self.summary.videos.append(report)
        if out_path is not None:
            self.summary.outputs.append(out_path)
        if report.complete:
            logger.info("%s: %d frames -> %s", source, written, out_path or "window")
        else:
            logger.warning(
                "%s: only %d of the %d announced frames could be read and were written to %s "
                "(the video ends early or has broken frames)",
                source,
                written,
                expected,
                out_path or "window",
            )
        if written == 0:
            self.summary.failures.append((source, "no frame could be read"))
        else:
            self.summary.processed.append(source)


def check_cluster_head(predictor: ClusterFormerPredictor, stages: Sequence[str], head: int) -> None:
    """Fail before any work when ``--cluster-head`` does not exist in a requested stage."""
    heads = dict(zip(STAGE_NAMES, getattr(predictor.model.backbone, "num_heads", [])))
    for stage in stages:
        if stage in heads and not 0 <= head < heads[stage]:
            raise ValueError(
                f"--cluster-head {head}: stage {stage} has {heads[stage]} heads (0..{heads[stage] - 1})"
            )


def read_frames(capture: cv2.VideoCapture, expected: int, source: str) -> Iterator[np.ndarray]:
    """Yield BGR frames; skip a few unreadable frames in a row while the container announces
    more, then stop (a corrupt tail ends the video instead of failing it)."""
    failures = 0
    position = int(capture.get(cv2.CAP_PROP_POS_FRAMES))
    while True:
        ok, frame = capture.read()
        previous, position = position, int(capture.get(cv2.CAP_PROP_POS_FRAMES))
        if ok and frame is not None:
            failures = 0
            yield frame
            continue
        # Go on only when the reader moved past the bad frame (else it is stuck at the end).
        moved = position > previous
        if moved and 0 < position < expected and failures < MAX_CONSECUTIVE_BAD_FRAMES:
            failures += 1
            logger.warning("%s: frame %d cannot be decoded; skipping it", source, position)
            continue
        return


def describe(outputs: dict) -> str:
    parts = []
    if "instances" in outputs:
        parts.append(f"{len(outputs['instances'])} instances")
    if "panoptic_seg" in outputs:
        parts.append(f"{len(outputs['panoptic_seg'][1])} panoptic segments")
    if "class_scores" in outputs:
        parts.append(f"top class {int(outputs['class_scores'].argmax())}")
    return ", ".join(parts) or "done"


def check_backend(args: argparse.Namespace) -> None:
    """Raise ValueError on a --backend / --export combination the demo cannot run."""
    if args.backend == "pytorch":
        if args.export:
            raise ValueError("--export is read by --backend torchscript / onnxruntime only")
        return
    if not args.export:
        raise ValueError(f"--backend {args.backend} needs the exported model: --export FILE")
    suffixes = {"torchscript": (".ts", ".pt"), "onnxruntime": (".onnx",)}[args.backend]
    if not args.export.endswith(suffixes):
        raise ValueError(
            f"--backend {args.backend} runs {' / '.join(suffixes)} files, got --export "
            f"{args.export!r}"
        )
    if args.show_clusters:
        raise ValueError(
            "--show-clusters needs the eager backbone's cluster assignments, which an export "
            "does not return; use --backend pytorch"
        )


def main(argv: Optional[Sequence[str]] = None) -> DemoSummary:
    """Run the demo with command-line arguments ``argv`` (default: ``sys.argv[1:]``)."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="clusterformer")
    logger.info("Arguments: %s", args)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ValueError(
            f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}"
        )
    check_backend(args)
    files, missing = expand_inputs(args.input) if args.input else ([], [])
    if args.output and args.input and not output_is_folder(args.output) and len(files) > 1:
        raise ValueError(
            f"--output {args.output!r} is a file, but there are {len(files)} inputs; give a folder"
        )
    run_registration_files(args.register)
    cfg, task = setup_cfg(args)
    logger.info("Task: %s", task)
    demo = Demo(cfg, task, args)
    if args.input:
        demo.run_on_images(files, missing, args.output)
    elif args.video_input:
        if not os.path.isfile(args.video_input):
            demo.summary.failures.append((args.video_input, "no such file"))
            logger.error("%s: no such file", args.video_input)
        else:
            try:
                demo.run_on_video(args.video_input, cv2.VideoCapture(args.video_input), args.output)
            except UnreadableImageError as error:
                demo.summary.failures.append((args.video_input, str(error)))
                logger.error("%s", error)
    else:
        try:
            demo.run_on_video("webcam", cv2.VideoCapture(0), args.output)
        except UnreadableImageError as error:
            demo.summary.failures.append(("webcam", str(error)))
            logger.error("%s", error)

    summary = demo.summary
    total = len(summary.processed) + len(summary.failures)
    logger.info("Processed %d of %d inputs", len(summary.processed), total)
    if summary.failures:
        listing = "\n".join(f"  {name}: {reason}" for name, reason in summary.failures)
        logger.error("%d input(s) failed:\n%s", len(summary.failures), listing)
    return summary


if __name__ == "__main__":
    try:
        result = main()
    except (ValueError, NoDisplayError) as error:
        print(f"demo.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if result.failures else 0)
