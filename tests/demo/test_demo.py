"""demo/demo.py on real photographs (scikit-image's samples), videos and awkward files.

The demo runs in-process (its ``main`` returns a summary) with checkpoints trained once per
session (tests/conftest.py); one test runs it as a command to check the exit status and the
report. A 20-iteration model's class scores stay far below the default panoptic thresholds (0.8),
so the panoptic config runs with both thresholds at 0 to give it segments to draw.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from train_net_helpers import CLS_CONFIG, PANOPTIC_CONFIG, REPO

from clusterformer.data.image_io import read_image_uint8

pytestmark = pytest.mark.slow

DEMO_PATH = os.path.join(REPO, "demo", "demo.py")
PHOTOS = ("astronaut", "coffee", "chelsea")
LOW_THRESHOLDS = (
    "MODEL.CLUSTER_DECODER.TEST.OBJECT_MASK_THRESHOLD",
    "0.0",
    "MODEL.CLUSTER_DECODER.TEST.OVERLAP_THRESHOLD",
    "0.0",
)


@pytest.fixture(scope="module")
def demo():
    """demo/demo.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("clusterformer_demo_script", DEMO_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Dict[str, Path]:
    """scikit-image's sample photographs (shipped in its wheel) as PNG files."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in PHOTOS:
        path = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        paths[name] = path
    return paths


@pytest.fixture
def run_demo(demo, shapes_panoptic_checkpoint, request):
    """``run_demo(*args, config=PANOPTIC_CONFIG)`` -> the demo's summary."""

    def run(*args: str, config: str = PANOPTIC_CONFIG):
        if config == PANOPTIC_CONFIG:
            opts = ["MODEL.WEIGHTS", shapes_panoptic_checkpoint, *LOW_THRESHOLDS]
        else:
            opts = ["MODEL.WEIGHTS", request.getfixturevalue("shapes_classification_checkpoint")]
        return demo.main(["--config-file", config, *args, "--opts", *opts])

    return run


def read_rgb(path) -> np.ndarray:
    return read_image_uint8(str(path), format="RGB")


def bare_rendering(image_rgb: np.ndarray) -> np.ndarray:
    """The image as Detectron2's Visualizer renders it with nothing drawn on it (matplotlib
    resamples it slightly, so this, not the input, is what "nothing drawn" looks like)."""
    return Visualizer(image_rgb, None).output.get_image()


def fraction_changed(drawn: np.ndarray, image_rgb: np.ndarray) -> float:
    """Fraction of pixels where the demo drew something."""
    return float(np.any(drawn != bare_rendering(image_rgb), axis=2).mean())


def read_video(path) -> tuple:
    """(frames, fps, (width, height)) of a video, reading until the first failure."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (
        int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    frames: List[np.ndarray] = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps, size


def write_video(path, num_frames: int = 10, fps: float = 7, size=(160, 120), fourcc="mp4v"):
    """A short clip of a photograph panning sideways."""
    from skimage import data

    photo = cv2.resize(data.chelsea()[:, :, ::-1], (size[0] * 2, size[1]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for i in range(num_frames):
        left = i * (size[0] // num_frames)
        writer.write(np.ascontiguousarray(photo[:, left : left + size[0]]))
    writer.release()


@pytest.mark.parametrize(
    "task", ["panoptic", "instance", "semantic", "detection", "classification"]
)
def test_every_task_on_photographs(task, run_demo, photos, tmp_path):
    """Detection here draws the segmentation model's ``instances`` as boxes only; the box-only
    detector has its own test below."""
    config = CLS_CONFIG if task == "classification" else PANOPTIC_CONFIG
    out = tmp_path / "out"
    summary = run_demo(
        "--input",
        *map(str, photos.values()),
        "--output",
        str(out),
        "--task",
        task,
        "--confidence-threshold",
        "0.0",
        config=config,
    )
    assert summary.failures == []
    assert sorted(summary.processed) == sorted(map(str, photos.values()))
    for name, photo_path in photos.items():
        photo = read_rgb(photo_path)
        drawn = read_rgb(out / f"{name}.png")
        assert drawn.shape == photo.shape, name
        assert fraction_changed(drawn, photo) > 0.001, f"{task} drew nothing on {name}"


def test_box_only_detector_on_photographs(demo, shapes_detection_checkpoint, photos, tmp_path):
    """The shapes detector (MASK_ON False): the task is inferred from its config, and its boxes
    are drawn at the photographs' sizes."""
    from conftest import DETECTION_CONFIG

    out = tmp_path / "out"
    summary = demo.main(
        [
            "--config-file",
            DETECTION_CONFIG,
            "--input",
            *map(str, photos.values()),
            "--output",
            str(out),
            "--confidence-threshold",
            "0.0",
            "--opts",
            "MODEL.WEIGHTS",
            shapes_detection_checkpoint,
        ]
    )
    assert summary.failures == [] and len(summary.processed) == len(photos)
    for name, photo_path in photos.items():
        photo = read_rgb(photo_path)
        drawn = read_rgb(out / f"{name}.png")
        assert drawn.shape == photo.shape, name
        assert fraction_changed(drawn, photo) > 0.001, f"the detector drew nothing on {name}"


def test_detection_draws_boxes_without_masks(run_demo, photos, tmp_path):
    common = ("--input", str(photos["coffee"]), "--confidence-threshold", "0.0")
    run_demo(*common, "--task", "instance", "--output", str(tmp_path / "instance.png"))
    run_demo(*common, "--task", "detection", "--output", str(tmp_path / "detection.png"))
    photo = read_rgb(photos["coffee"])
    instance = read_rgb(tmp_path / "instance.png")
    detection = read_rgb(tmp_path / "detection.png")
    # Masks tint their whole area; boxes only touch outlines and labels.
    assert fraction_changed(instance, photo) > fraction_changed(detection, photo) > 0


def test_confidence_threshold_filters_what_is_drawn(run_demo, photos, tmp_path):
    photo = read_rgb(photos["astronaut"])
    for threshold in ("1.0", "0.0"):
        out = tmp_path / f"threshold_{threshold}.png"
        run_demo(
            "--input",
            str(photos["astronaut"]),
            "--output",
            str(out),
            "--task",
            "instance",
            "--confidence-threshold",
            threshold,
        )
        drawn = read_rgb(out)
        if threshold == "1.0":
            # No instance scores 1.0: the output is the un-annotated image.
            assert np.array_equal(drawn, bare_rendering(photo))
        else:
            assert fraction_changed(drawn, photo) > 0.01


@pytest.fixture
def demo_log():
    """The demo's log messages (Detectron2's setup_logger stops them propagating to caplog)."""
    messages: List[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("clusterformer.demo")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def expected_video_name(demo, stem: str) -> str:
    """What the demo names a video written to a folder: x264 .mkv where OpenCV writes it."""
    return stem + (".mkv" if demo.video_format_supported("x264", ".mkv") else ".mp4")


def test_video_keeps_frame_count_size_and_rate(demo, run_demo, tmp_path, demo_log):
    source = tmp_path / "clip.mp4"
    write_video(source, num_frames=10, fps=7, size=(160, 120))
    summary = run_demo("--video-input", str(source), "--output", str(tmp_path / "out"))
    (report,) = summary.videos
    assert report.output == str(tmp_path / "out" / expected_video_name(demo, "clip"))
    frames, fps, size = read_video(report.output)
    assert len(frames) == 10 and fps == pytest.approx(7.0) and size == (160, 120)
    assert (report.frames_written, report.frames_expected) == (10, 10) and report.complete
    assert summary.failures == [] and summary.outputs == [report.output]
    # The codec chosen is said in the log.
    log = "\n".join(demo_log)
    if report.output.endswith(".mkv"):
        assert "Writing videos with the x264 codec (.mkv)" in log, log
    else:
        assert "cannot write x264 video (.mkv); writing mp4v (.mp4)" in log, log


def test_video_format_is_x264_mkv_when_available_else_mp4v(demo, monkeypatch, demo_log):
    # The probe writes a real clip with OpenCV: mp4v always works, a made-up codec never.
    assert demo.video_format_supported("mp4v", ".mp4")
    assert not demo.video_format_supported("ZZZZ", ".mkv")

    monkeypatch.setattr(demo, "video_format_supported", lambda codec, suffix: codec == "x264")
    assert demo.choose_video_format() == ("x264", ".mkv")
    assert demo.choose_video_format(".mp4") == ("x264", ".mp4")  # a named file keeps its suffix

    monkeypatch.setattr(demo, "video_format_supported", lambda codec, suffix: False)
    assert demo.choose_video_format() == ("mp4v", ".mp4")
    assert demo.choose_video_format(".avi") == ("mp4v", ".avi")
    assert "cannot write x264 video (.mkv); writing mp4v (.mp4) instead" in demo_log[-2]
    assert "cannot write x264 video (.avi); writing mp4v (.avi) instead" in demo_log[-1]


def test_show_clusters_on_video_writes_one_video_per_map(demo, run_demo, tmp_path):
    source = tmp_path / "clip.mp4"
    write_video(source, num_frames=4, fps=5, size=(160, 120))
    out = tmp_path / "out"
    summary = run_demo(
        "--video-input",
        str(source),
        "--output",
        str(out),
        "--show-clusters",
        "--cluster-stages",
        "res2",
        "res3",
    )
    (report,) = summary.videos
    assert report.complete and summary.failures == []
    suffix = os.path.splitext(report.output)[1]
    maps = [str(out / f"clip_clusters_{name}{suffix}") for name in ("res2", "res3", "decoder")]
    assert sorted(summary.outputs) == sorted([report.output, *maps])
    drawn, _, _ = read_video(report.output)
    for path in maps:
        frames, fps, size = read_video(path)
        assert len(frames) == 4 and fps == pytest.approx(5.0) and size == (160, 120), path
        # Colours over every pixel: a cluster map is not the drawn frame.
        assert np.abs(frames[0].astype(int) - drawn[0]).sum(axis=2).mean() > 10, path


@pytest.mark.parametrize("damage", ["corrupt_tail_mp4", "truncated_avi"])
def test_damaged_video_keeps_the_frames_before_the_damage(damage, run_demo, tmp_path):
    if damage == "corrupt_tail_mp4":
        source = tmp_path / "clip.mp4"
        write_video(source)
        data = bytearray(source.read_bytes())
        # The frames are in 'mdat', the index in 'moov' after it (OpenCV's layout): overwrite
        # the last 40% of the frame data and keep the index.
        mdat, moov = data.find(b"mdat"), data.find(b"moov")
        assert 0 < mdat < moov
        start = mdat + 8 + int((moov - 8 - mdat - 8) * 0.6)
        noise = np.random.default_rng(0).integers(0, 256, moov - 8 - start, dtype=np.uint8)
        data[start : moov - 8] = noise.tobytes()
        source.write_bytes(bytes(data))
    else:
        source = tmp_path / "clip.avi"
        write_video(source, fourcc="MJPG")
        data = source.read_bytes()
        source.write_bytes(data[: int(len(data) * 0.6)])  # ends early, index lost
    readable, _, _ = read_video(source)
    assert 0 < len(readable) < 10  # the damage is real and the start is intact

    summary = run_demo("--video-input", str(source), "--output", str(tmp_path / "out"))
    (report,) = summary.videos
    written, fps, size = read_video(report.output)
    assert len(written) == len(readable) and fps == pytest.approx(7.0) and size == (160, 120)
    assert report.frames_written == len(readable) and report.frames_expected == 10
    assert not report.complete


def test_show_clusters_writes_one_map_per_stage(run_demo, photos, tmp_path):
    out = tmp_path / "out"
    summary = run_demo(
        "--input",
        str(photos["chelsea"]),
        "--output",
        str(out),
        "--show-clusters",
        "--cluster-stages",
        "res2",
        "res3",
        "res4",
    )
    photo = read_rgb(photos["chelsea"])
    expected = [out / f"chelsea_clusters_{s}.png" for s in ("res2", "res3", "res4", "decoder")]
    assert sorted(summary.outputs) == sorted(map(str, [out / "chelsea.png", *expected]))
    for path in expected:
        picture = read_rgb(path)
        assert picture.shape == photo.shape
        assert np.any(picture != photo, axis=2).mean() > 0.5  # colours over every pixel


def test_cluster_maps_have_several_clusters(shapes_panoptic_checkpoint, photos):
    """What --show-clusters draws: at least two clusters in every stage and in the decoder."""
    from d2_config import make_cfg

    from clusterformer import ClusterFormerPredictor
    from clusterformer.utils.visualizer import render_cluster_maps

    predictor = ClusterFormerPredictor(make_cfg(PANOPTIC_CONFIG, shapes_panoptic_checkpoint))
    image = read_rgb(photos["chelsea"])
    _, maps = predictor.predict_with_clusters(image, format="RGB")
    for stage in ("res2", "res3", "res4"):
        ids = maps.geometry.input_map_to_original(maps.backbone[stage][0])
        assert len(np.unique(ids)) >= 2, stage
    decoder = maps.geometry.input_map_to_original(maps.decoder)
    assert len(np.unique(decoder[decoder >= 0])) >= 2
    pictures = render_cluster_maps(
        image, maps, ["res2"], head=1, metadata=predictor.metadata, label_queries=True
    )
    assert sorted(pictures) == ["decoder", "res2"]
    with pytest.raises(ValueError, match="head 9"):
        render_cluster_maps(image, maps, ["res2"], head=9)


def test_classifier_cluster_maps(run_demo, photos, tmp_path):
    out = tmp_path / "out"
    summary = run_demo(
        "--input",
        str(photos["coffee"]),
        "--output",
        str(out),
        "--show-clusters",
        "--cluster-stages",
        "res5",
        config=CLS_CONFIG,
    )
    # The classifier has no decoder; its backbone sees a centre crop (the rest is dimmed).
    assert sorted(summary.outputs) == sorted(
        [str(out / "coffee.png"), str(out / "coffee_clusters_res5.png")]
    )
    assert read_rgb(out / "coffee_clusters_res5.png").shape == read_rgb(photos["coffee"]).shape
    # The nano classifier's res2 has 2 heads: head 5 is refused before any image is read.
    with pytest.raises(ValueError, match="--cluster-head 5: stage res2 has 2 heads"):
        run_demo(
            "--input",
            str(photos["coffee"]),
            "--output",
            str(tmp_path / "none"),
            "--show-clusters",
            "--cluster-head",
            "5",
            config=CLS_CONFIG,
        )
    assert not (tmp_path / "none").exists()


def make_awkward_images(folder: Path) -> Dict[str, tuple]:
    """Grayscale, RGBA, 16-bit (gray and colour) PNGs, a palette GIF and an EXIF-rotated JPEG
    -> {file name: the (H, W) the demo must output}."""
    from skimage import data

    photo = data.chelsea()[:120, :200]  # (120, 200, 3), not square: rotation shows
    Image.fromarray(photo).convert("L").save(folder / "gray.png")
    rgba = np.dstack([photo, np.linspace(0, 255, 200, dtype=np.uint8)[None].repeat(120, 0)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    gray16 = (photo[:, :, 0].astype(np.uint16) * 257) // 3
    cv2.imwrite(str(folder / "gray16.png"), gray16)
    cv2.imwrite(str(folder / "color16.png"), photo[:, :, ::-1].astype(np.uint16) * 257)
    Image.fromarray(photo).convert("P").save(folder / "palette.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(photo).save(folder / "rotated.jpg", exif=exif.tobytes())
    return {
        "gray.png": (120, 200),
        "rgba.png": (120, 200),
        "gray16.png": (120, 200),
        "color16.png": (120, 200),
        "palette.png": (120, 200),  # GIF is written as PNG
        "rotated.jpg": (200, 120),
    }


def test_grayscale_rgba_16bit_and_exif_rotated_inputs(run_demo, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    expected = make_awkward_images(inputs)
    out = tmp_path / "out"
    summary = run_demo("--input", str(inputs), "--output", str(out), "--task", "semantic")
    assert summary.failures == []
    assert len(summary.processed) == len(expected)
    for name, size in expected.items():
        drawn = read_rgb(out / name)
        assert drawn.shape == (*size, 3), name


def make_folder_with_bad_files(folder: Path, photos: Dict[str, Path]) -> None:
    for name in ("astronaut", "coffee"):
        (folder / f"{name}.png").write_bytes(photos[name].read_bytes())
    (folder / "broken.png").write_bytes(photos["chelsea"].read_bytes()[:300])  # truncated
    (folder / "notes.txt").write_text("not an image\n")


def test_folder_with_bad_files_goes_on_and_reports_them(run_demo, photos, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    make_folder_with_bad_files(inputs, photos)
    out = tmp_path / "out"
    summary = run_demo("--input", str(inputs), str(tmp_path / "missing*.jpg"), "--output", str(out))
    assert sorted(summary.processed) == [str(inputs / "astronaut.png"), str(inputs / "coffee.png")]
    failed = sorted(os.path.basename(name) for name, _ in summary.failures)
    assert failed == ["broken.png", "missing*.jpg", "notes.txt"]
    assert sorted(os.listdir(out)) == ["astronaut.png", "coffee.png"]


def test_command_line_reports_failures_and_exit_status(
    photos, shapes_panoptic_checkpoint, tmp_path
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    make_folder_with_bad_files(inputs, photos)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [
        sys.executable,
        DEMO_PATH,
        "--config-file",
        PANOPTIC_CONFIG,
        "--input",
        str(inputs),
        "--output",
        str(tmp_path / "out"),
        "--opts",
        "MODEL.WEIGHTS",
        shapes_panoptic_checkpoint,
    ]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "2 input(s) failed" in log and "broken.png" in log and "notes.txt" in log
    assert "Processed 2 of 4 inputs" in log
    assert (tmp_path / "out" / "astronaut.png").is_file()

    # A usage error (several inputs, one output file) exits with 2 before any work.
    command[command.index(str(tmp_path / "out"))] = str(tmp_path / "single.png")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "is a file" in proc.stderr


def test_without_output_and_display_the_run_stops_with_a_clear_error(
    demo, run_demo, photos, monkeypatch
):
    def no_window(*args, **kwargs):
        raise cv2.error("The function is not implemented (headless OpenCV)")

    monkeypatch.setattr(demo.cv2, "namedWindow", no_window)
    with pytest.raises(demo.NoDisplayError, match="pass --output"):
        run_demo("--input", str(photos["coffee"]), str(photos["chelsea"]))


MAGENTA = (255, 0, 255)


def test_metadata_of_a_registered_data_set_is_drawn(run_demo, photos, tmp_path):
    """--metadata NAME draws NAME's classes and colours instead of DATASETS.TEST[0]'s: a data
    set registered by --register whose every class is magenta turns the semantic drawing
    magenta."""
    registration = tmp_path / "register_names.py"
    registration.write_text(
        "from detectron2.data import MetadataCatalog\n"
        "MetadataCatalog.get('demo_test_magenta').set(\n"
        "    stuff_classes=[f'part{i}' for i in range(7)],\n"
        f"    stuff_colors=[{list(MAGENTA)}] * 7,\n"
        ")\n"
    )
    common = ("--input", str(photos["coffee"]), "--task", "semantic")
    run_demo(*common, "--output", str(tmp_path / "default.png"))
    run_demo(
        *common,
        "--register",
        str(registration),
        "--metadata",
        "demo_test_magenta",
        "--output",
        str(tmp_path / "named.png"),
    )
    default = read_rgb(tmp_path / "default.png").astype(float)
    named = read_rgb(tmp_path / "named.png").astype(float)
    magenta = np.array(MAGENTA, dtype=float)
    assert np.abs(named - magenta).mean() < np.abs(default - magenta).mean() - 20

    with pytest.raises(
        ValueError, match="--metadata 'shapes_panoptic_vall'.*'shapes_panoptic_val'"
    ):
        run_demo(*common, "--metadata", "shapes_panoptic_vall", "--output", str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_config_errors_name_the_key_and_the_file(demo, photos, tmp_path):
    """The demo builds its config with clusterformer.d2.config_files.load_config."""
    common = ["--input", str(photos["coffee"]), "--output", str(tmp_path / "out")]
    with pytest.raises(KeyError, match="MODEL.NO_SUCH_KEY.* command line"):
        demo.main(["--config-file", PANOPTIC_CONFIG, *common, "--opts", "MODEL.NO_SUCH_KEY", "1"])
    config = tmp_path / "bad.yaml"
    config.write_text(f"_BASE_: {os.path.join(REPO, PANOPTIC_CONFIG)}\nSOLVER:\n  NO_SUCH: 1\n")
    with pytest.raises(KeyError, match=r"SOLVER.NO_SUCH.*bad\.yaml"):
        demo.main(["--config-file", str(config), *common])
    assert not (tmp_path / "out").exists()
