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
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from clusterformer.utils.opencv import import_cv2

cv2 = import_cv2()  # before detectron2, which imports cv2 without saying which package gives it

import numpy as np  # noqa: E402
import tqdm  # noqa: E402
from detectron2.config import CfgNode  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from clusterformer.d2 import ClusterFormerPredictor, load_config  # noqa: E402
from clusterformer.d2.predictor import TASKS, enable_task_outputs, infer_task  # noqa: E402
from clusterformer.data.datasets import use_checked_builtin_loaders  # noqa: E402
from clusterformer.data.datasets.class_metadata import class_metadata  # noqa: E402
from clusterformer.data.datasets.user_registration import (  # noqa: E402
    REGISTER_HELP,
    run_registration_files,
)
from clusterformer.data.image_io import UnreadableImageError, read_image_uint8  # noqa: E402
from clusterformer.modeling.backbone.clusterformer import STAGE_NAMES  # noqa: E402
from clusterformer.utils.visualizer import PredictionVisualizer, render_cluster_maps  # noqa: E402

WINDOW_NAME = "ClusterFormer"
# What runs the network (--backend): the eager model or an export of tools/deploy/export_model.py.
BACKENDS = ("pytorch", "torchscript", "onnxruntime")
# Extensions OpenCV writes; outputs of other inputs (GIF, ...) are written as PNG.
WRITABLE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Unreadable frames tolerated in a row before a video is considered finished.
MAX_CONSECUTIVE_BAD_FRAMES = 5
# Video codecs, best first, as Detectron2's demo picks them: x264 in Matroska where the OpenCV build
# has it (pip's OpenCV wheels do not: their FFmpeg is built without the GPL libx264), else mp4v.
PREFERRED_VIDEO_FORMAT = ("x264", ".mkv")
FALLBACK_VIDEO_FORMAT = ("mp4v", ".mp4")

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
        help="also draw each pixel's cluster in the chosen backbone stages and in the decoder: "
        "<name>_clusters_<stage>.png for images, a <name>_clusters_<stage> video for videos "
        "(beside the frame in the window without --output)",
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
        "--metadata",
        metavar="NAME",
        help="the registered data set whose class names and colours are drawn (e.g. one of "
        "--register FILE); default: the config's DATASETS.TEST[0] (else DATASETS.TRAIN[0])",
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
    """The config of ``--config-file`` + ``--opts`` (through the project's loader, whose errors
    name the key and the file that sets it, or the command line) with the task's outputs
    enabled."""
    cfg = load_config(args.config_file, args.opts)
    task = args.task or infer_task(cfg)
    return enable_task_outputs(cfg, task), task


def resolve_metadata(name: Optional[str]) -> Optional[Any]:
    """The metadata of the registered data set ``name`` (``--metadata``); None when ``name`` is
    None (the predictor's: the config's DATASETS.TEST[0], else DATASETS.TRAIN[0]).

    Raises:
        ValueError: ``name`` is not a registered data set (the message lists the close ones).
    """
    if name is None:
        return None
    if name not in DatasetCatalog.list() and name not in MetadataCatalog.list():
        import difflib

        known = sorted(set(DatasetCatalog.list()) | set(MetadataCatalog.list()))
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"--metadata {name!r}: no data set of that name is registered{hint} (register "
            "yours with --register FILE, see docs/custom_datasets.md)"
        )
    metadata = class_metadata(name)
    if not (metadata.get("thing_classes", None) or metadata.get("stuff_classes", None)):
        logger.warning("Data set %r has no class names: classes are drawn as numbers", name)
    return metadata


@cache
def video_format_supported(codec: str, suffix: str) -> bool:
    """Whether this OpenCV build writes ``codec`` into a ``suffix`` file: a short clip is written
    to a temporary folder, as Detectron2's demo tests it."""
    with tempfile.TemporaryDirectory(prefix="clusterformer_video_format_") as folder:
        path = os.path.join(folder, "probe" + suffix)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), 30.0, (16, 16), True)
        opened = writer.isOpened()
        for _ in range(5):
            writer.write(np.zeros((16, 16, 3), np.uint8))
        writer.release()
        return opened and os.path.isfile(path) and os.path.getsize(path) > 0


def choose_video_format(suffix: Optional[str] = None) -> Tuple[str, str]:
    """(codec, file suffix) for a written video: x264 when this OpenCV build writes it, else
    mp4v; the choice is logged. ``suffix`` is that of an output file the user named (kept);
    None (an output folder) picks ``.mkv`` for x264 and ``.mp4`` for mp4v."""
    preferred_codec, preferred_suffix = PREFERRED_VIDEO_FORMAT
    suffix_tried = suffix or preferred_suffix
    if video_format_supported(preferred_codec, suffix_tried):
        logger.info("Writing videos with the x264 codec (%s)", suffix_tried)
        return preferred_codec, suffix_tried
    fallback_codec, fallback_suffix = FALLBACK_VIDEO_FORMAT
    logger.warning(
        "This OpenCV build cannot write x264 video (%s); writing mp4v (%s) instead (an OpenCV "
        "built with FFmpeg and libx264 writes smaller files)",
        suffix_tried,
        suffix or fallback_suffix,
    )
    return fallback_codec, suffix or fallback_suffix


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
    """Files (local or served by an iopath handler registered with Detectron2's PathManager),
    local folders (their files, sorted, hidden ones skipped) and glob patterns -> (the files to
    process, [(pattern, reason)] for patterns that name nothing)."""
    files: List[str] = []
    missing: List[Tuple[str, str]] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            names = sorted(n for n in os.listdir(pattern) if not n.startswith("."))
            files.extend(
                os.path.join(pattern, n) for n in names if os.path.isfile(os.path.join(pattern, n))
            )
        elif PathManager.isfile(pattern):  # local, or served by a registered iopath handler
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

    def __init__(
        self, cfg: CfgNode, task: str, args: argparse.Namespace, metadata: Optional[Any] = None
    ):
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
        self.metadata = metadata if metadata is not None else self.predictor.metadata
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
        show them. With ``--show-clusters`` each cluster map is a video of its own (beside the
        frame in the window). Frames already written are kept whatever happens later (the
        writers are released in all cases), and the report compares them with the announced
        count."""
        if not capture.isOpened():
            raise UnreadableImageError(f"Cannot open the video {source!r}")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if not math.isfinite(fps) or fps <= 0:
            logger.warning("%s announces no frame rate; writing at 30 fps", source)
            fps = 30.0
        writers = VideoWriters(fps, (width, height))
        out_path = None
        if output is not None:
            if output_is_folder(output):
                writers.codec, suffix = choose_video_format()
                stem = os.path.splitext(os.path.basename(source))[0] or "webcam"
                out_path = os.path.join(output, stem + suffix)
            else:
                writers.codec, _ = choose_video_format(os.path.splitext(output)[1])
                out_path = output
            writers.open("", out_path)
        visualizer = PredictionVisualizer(self.metadata, self.task, video=True)
        written = 0
        progress = tqdm.tqdm(total=expected if expected > 0 else None, unit="frame")
        try:
            for frame in read_frames(capture, expected, source):
                frame_rgb = np.ascontiguousarray(frame[:, :, ::-1])
                if self.args.show_clusters:
                    outputs, maps = self.predictor.predict_with_clusters(frame, format="BGR")
                else:
                    outputs, maps = self.predictor(frame), None
                pictures = {"": visualizer.draw(frame_rgb, outputs)}
                if maps is not None:
                    for name, picture in render_cluster_maps(
                        frame_rgb,
                        maps,
                        self.args.cluster_stages,
                        head=self.args.cluster_head,
                        metadata=self.metadata,
                        label_queries=not self.args.no_cluster_labels,
                    ).items():
                        pictures[f"_clusters_{name}"] = picture
                pictures_bgr = {
                    name: fit_frame(picture[:, :, ::-1], width, height)
                    for name, picture in pictures.items()
                }
                if out_path is not None:
                    stem, suffix = os.path.splitext(out_path)
                    for name, picture in pictures_bgr.items():
                        writers.write(name, f"{stem}{name}{suffix}", picture)
                elif show_bgr(np.hstack(list(pictures_bgr.values())), 1) == 27:
                    break
                written += 1
                progress.update(1)
        finally:
            progress.close()
            writers.release()
            capture.release()
        report = VideoReport(source, out_path, written, expected, fps, (width, height))
        self.summary.videos.append(report)
        self.summary.outputs.extend(writers.paths)
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


def fit_frame(image_bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image_bgr`` as a contiguous ``(height, width, 3)`` frame (VideoWriter silently drops
    frames of another size)."""
    image_bgr = np.ascontiguousarray(image_bgr)
    if image_bgr.shape[:2] != (height, width):
        image_bgr = cv2.resize(image_bgr, (width, height))
    return image_bgr


class VideoWriters:
    """The videos of one input, by name ("" the drawn frames, "_clusters_<stage>" the cluster
    maps), opened on first use: which maps exist is known once the first frame is drawn."""

    def __init__(self, fps: float, size: Tuple[int, int]):
        self.fps = fps
        self.size = size
        self.codec = FALLBACK_VIDEO_FORMAT[0]
        self.writers: Dict[str, cv2.VideoWriter] = {}
        self.paths: List[str] = []

    def open(self, name: str, path: str) -> None:
        """Open the video ``name`` at ``path``; OSError naming it when OpenCV cannot."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*self.codec), self.fps, self.size)
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write the video {path!r} ({self.codec})")
        self.writers[name] = writer
        self.paths.append(path)

    def write(self, name: str, path: str, frame_bgr: np.ndarray) -> None:
        if name not in self.writers:
            self.open(name, path)
        self.writers[name].write(frame_bgr)

    def release(self) -> None:
        for writer in self.writers.values():
            writer.release()


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
    # As train_net.py: the checked loaders first, so that a --register file can replace them.
    use_checked_builtin_loaders()
    run_registration_files(args.register)
    cfg, task = setup_cfg(args)
    metadata = resolve_metadata(args.metadata)
    logger.info("Task: %s", task)
    demo = Demo(cfg, task, args, metadata)
    if args.input:
        demo.run_on_images(files, missing, args.output)
    elif args.video_input:
        if not PathManager.isfile(args.video_input):
            demo.summary.failures.append((args.video_input, "no such file"))
            logger.error("%s: no such file", args.video_input)
        else:
            try:
                # OpenCV reads local files only: a remote video is fetched by its iopath handler.
                local = PathManager.get_local_path(args.video_input)
                demo.run_on_video(args.video_input, cv2.VideoCapture(local), args.output)
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
    except (ValueError, KeyError, FileNotFoundError, NoDisplayError) as error:
        # A KeyError's str() is its repr: print the message the config loader wrote.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"demo.py: error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if result.failures else 0)
