"""The "shapes" data set: a small synthetic data set in the exact formats of COCO 2017.

It lets ClusterFormer be trained and evaluated on a laptop CPU in minutes, and lets the tests run
Detectron2's standard evaluators unchanged. Images show 4 kinds of "things" (circle, square,
triangle, star; random colour, size, rotation; later ones occlude earlier ones) on 3 kinds of
textured "stuff" regions (sky, grass, wall) laid out by random wavy curves. Category ids are
non-contiguous, as in COCO, so the id mappings are exercised.

Layout written under ``root`` (default ``$DETECTRON2_DATASETS/shapes``, with
``DETECTRON2_DATASETS`` defaulting to ``datasets``)::

    manifest.json                      # generator version + parameters; written last
    {train,val}/<image id>.png         # RGB images (PNG, lossless)
    annotations/instances_{split}.json # COCO instances: things only, polygons or RLE
    annotations/panoptic_{split}.json  # COCO panoptic: segments_info, things and stuff
    panoptic_{split}/<image id>.png    # RGB, segment id = R + 256 G + 256^2 B, 0 = void
    panoptic_semseg_{split}/<image id>.png  # uint8, contiguous id over all categories, 255 = void
    classification/{split}/<class>/*.png    # one dominant thing per image, 64 x 64

Annotations describe the *visible* part of every thing. A thing whose visible area is below
``min_visible_area`` is not annotated: its pixels are void (0 in the panoptic PNG, 255 in the
semantic PNG), as COCO leaves unlabeled pixels. An instance is stored as polygons (one per
4-connected part, exact: they follow pixel edges) unless its visible mask has a hole (a thing
nested inside it), in which case it is a compressed RLE; both occur.

The data set is generated on first use by :func:`ensure_shapes`, into a temporary folder that is
renamed into place once complete, under an exclusive file lock, so that concurrent processes
(DDP workers) wait for one generation. A different generator version or parameters trigger a
new generation. Scenes are rendered by several processes (one per available CPU, at most 8):
every scene and image has its own seed, so the files are the same, byte for byte, whatever the
number. Command line: ``python -m clusterformer.data.datasets.shapes --root DIR [--workers N]``.

This module needs numpy, Pillow and pycocotools only (no detectron2).
"""

import argparse
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from . import generated_cache
from .generated_cache import ensure_generated, read_manifest, write_manifest
from .mask_encoding import encode_rle, id2rgb, mask_bbox, mask_to_polygons
from .shapes_scene import render_classification_image, render_scene
from .shapes_spec import (
    CATEGORIES,
    SPLITS,
    STUFF_CATEGORIES,
    THING_CATEGORIES,
    ShapesConfig,
    ShapesSplitPaths,
    default_root,
    split_paths,
)

__all__ = [
    "CATEGORIES",
    "GENERATOR_VERSION",
    "SPLITS",
    "STUFF_CATEGORIES",
    "THING_CATEGORIES",
    "ShapesConfig",
    "ShapesSplitPaths",
    "default_root",
    "ensure_shapes",
    "generate_shapes",
    "is_up_to_date",
    "read_manifest",
    "split_paths",
]

logger = logging.getLogger(__name__)

# Bump whenever the output for given parameters changes: cached data sets are then regenerated.
GENERATOR_VERSION = 1

# Image ids are unique over both splits, as in COCO.
_FIRST_IMAGE_ID = {"train": 1, "val": 1_000_001}
# Independent random streams: (seed, stream, split, index...) seeds one generator per image.
_STREAM_SCENE, _STREAM_CLASSIFICATION, _STREAM_SEGMENT_IDS = 0, 1, 2


# ---- generation -------------------------------------------------------------------------------


def _rng(config: ShapesConfig, stream: int, split: str, *indices: int) -> np.random.Generator:
    key = [config.seed, stream, SPLITS.index(split), *indices]
    return np.random.default_rng(np.random.SeedSequence(key))


def _save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _unique_segment_id(rng: np.random.Generator, color: List[int], taken: set) -> int:
    """A panoptic segment id near the category colour, as panopticapi's IdGenerator makes them."""
    candidate = color
    while True:
        segment_id = int(candidate[0] + 256 * candidate[1] + 256 * 256 * candidate[2])
        if segment_id not in taken and segment_id != 0:
            taken.add(segment_id)
            return segment_id
        candidate = np.clip(np.asarray(color) + rng.integers(-40, 41, size=3), 0, 255).tolist()


def _annotate_scene(
    config: ShapesConfig,
    split: str,
    index: int,
    paths: ShapesSplitPaths,
) -> Tuple[dict, List[dict], dict]:
    """Render scene ``index`` of ``split`` and write its three PNGs.

    Returns:
        the COCO ``images`` entry, its instance annotations (without ``id``: those count over
        the whole split, see :func:`_generate_split`), and its panoptic annotation.
    """
    image_id = _FIRST_IMAGE_ID[split] + index
    file_stem = f"{image_id:012d}"
    height, width = config.image_height, config.image_width
    scene = render_scene(
        _rng(config, _STREAM_SCENE, split, index),
        height,
        width,
        *config.things_range(split),
    )
    id_rng = _rng(config, _STREAM_SEGMENT_IDS, split, index)
    panoptic = np.zeros((height, width), dtype=np.int64)
    semantic = np.full((height, width), 255, dtype=np.uint8)
    segments_info, instance_annotations, taken_ids = [], [], set()

    def add_segment(category_index: int, mask: np.ndarray) -> dict:
        category = CATEGORIES[category_index]
        segment_id = _unique_segment_id(id_rng, category["color"], taken_ids)
        panoptic[mask] = segment_id
        semantic[mask] = category_index
        info = {
            "id": segment_id,
            "category_id": category["id"],
            "iscrowd": 0,
            "bbox": mask_bbox(mask),
            "area": int(mask.sum()),
        }
        segments_info.append(info)
        return info

    for stuff_index in range(len(STUFF_CATEGORIES)):
        mask = (scene.stuff == stuff_index) & (scene.instances < 0)
        if mask.any():
            add_segment(len(THING_CATEGORIES) + stuff_index, mask)
    for thing_index, thing in enumerate(scene.things):
        mask = scene.instances == thing_index
        if mask.sum() < config.min_visible_area:
            continue  # left void, like unlabeled pixels in COCO
        info = add_segment(thing.kind, mask)
        polygons, has_holes = mask_to_polygons(mask)
        instance_annotations.append(
            {
                "image_id": image_id,
                "category_id": info["category_id"],
                # Polygons cannot express holes; COCO then stores the mask as RLE.
                "segmentation": encode_rle(mask) if has_holes else polygons,
                "area": info["area"],
                "bbox": info["bbox"],
                "iscrowd": 0,
            }
        )

    file_name = f"{file_stem}.png"
    _save_png(scene.image, os.path.join(paths.image_root, file_name))
    _save_png(id2rgb(panoptic), os.path.join(paths.panoptic_root, file_name))
    _save_png(semantic, os.path.join(paths.sem_seg_root, file_name))
    image = {"id": image_id, "file_name": file_name, "height": height, "width": width}
    panoptic_annotation = {
        "image_id": image_id,
        "file_name": file_name,
        "segments_info": segments_info,
    }
    return image, instance_annotations, panoptic_annotation


def _coco_header(split: str) -> dict:
    return {
        "info": {
            "description": f"shapes {split}: synthetic data set of ClusterFormer",
            "version": str(GENERATOR_VERSION),
            "year": 2023,
            "contributor": "clusterformer.data.datasets.shapes",
            "date_created": "",
        },
        "licenses": [],
    }


def _write_json(obj: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _serial_map(function: Callable, items: Sequence) -> list:
    return [function(item) for item in items]


def _write_classification_image(
    config: ShapesConfig, split: str, root: str, kind_and_index: Tuple[int, int]
) -> None:
    kind, index = kind_and_index
    image = render_classification_image(
        _rng(config, _STREAM_CLASSIFICATION, split, kind, index),
        config.classification_image_size,
        kind,
    )
    name = THING_CATEGORIES[kind]["name"]
    _save_png(image, os.path.join(root, name, f"{name}_{index:05d}.png"))


def _generate_split(
    root: str, config: ShapesConfig, split: str, parallel_map: Callable[..., list] = _serial_map
) -> Dict[str, int]:
    paths = split_paths(root, split)
    for folder in (paths.image_root, paths.panoptic_root, paths.sem_seg_root):
        os.makedirs(folder, exist_ok=True)
    scenes = parallel_map(
        functools.partial(_annotate_scene, config, split, paths=paths),
        range(config.num_images(split)),
    )
    images, instance_annotations, panoptic_annotations = [], [], []
    for image, annotations, panoptic_annotation in scenes:
        images.append(image)
        for annotation in annotations:
            instance_annotations.append({"id": len(instance_annotations) + 1, **annotation})
        panoptic_annotations.append(panoptic_annotation)

    thing_categories = [
        {k: c[k] for k in ("id", "name", "supercategory")} for c in THING_CATEGORIES
    ]
    instances = {
        **_coco_header(split),
        "images": images,
        "annotations": instance_annotations,
        "categories": thing_categories,
    }
    panoptic = {
        **_coco_header(split),
        "images": images,
        "annotations": panoptic_annotations,
        "categories": CATEGORIES,
    }
    _write_json(instances, paths.instances_json)
    _write_json(panoptic, paths.panoptic_json)

    per_class = config.classification_per_class(split)
    for category in THING_CATEGORIES:
        os.makedirs(os.path.join(paths.classification_root, category["name"]), exist_ok=True)
    parallel_map(
        functools.partial(_write_classification_image, config, split, paths.classification_root),
        [(kind, index) for kind in range(len(THING_CATEGORIES)) for index in range(per_class)],
    )
    return {
        "images": len(images),
        "instances": len(instance_annotations),
        "classification_images": per_class * len(THING_CATEGORIES),
    }


def _manifest_identity(config: ShapesConfig) -> dict:
    return {
        "generator": "clusterformer.data.datasets.shapes",
        "version": GENERATOR_VERSION,
        "params": dataclasses.asdict(config),
    }


def default_workers() -> int:
    """Processes that render scenes: the CPUs this process may use (at most 8), or 1 inside a
    daemonic process (such as a data loader worker), which may not start processes."""
    if multiprocessing.current_process().daemon:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1))


def generate_shapes(
    root: str, config: Optional[ShapesConfig] = None, workers: Optional[int] = None
) -> None:
    """Write the whole data set into ``root`` (no caching, no locking: see :func:`ensure_shapes`).

    Every scene and classification image is drawn from its own seed, so the bytes written do not
    depend on ``workers`` (processes rendering in parallel; default :func:`default_workers`).
    The manifest is written last, so a folder with a manifest is complete.
    """
    config = config or ShapesConfig()
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"generate_shapes: workers must be >= 1, got {workers}")
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    if workers == 1:
        counts = {split: _generate_split(root, config, split) for split in SPLITS}
    else:
        with ProcessPoolExecutor(workers) as pool:

            def parallel_map(function: Callable, items: Sequence) -> list:
                # A few chunks per worker: one task per image would cost more in transfers.
                chunksize = max(1, len(items) // (4 * workers))
                return list(pool.map(function, items, chunksize=chunksize))

            counts = {split: _generate_split(root, config, split, parallel_map) for split in SPLITS}
    write_manifest(root, {**_manifest_identity(config), "counts": counts, "categories": CATEGORIES})


def is_up_to_date(root: str, config: Optional[ShapesConfig] = None) -> bool:
    """True when ``root`` holds a complete data set of this generator version and parameters."""
    return generated_cache.is_up_to_date(root, _manifest_identity(config or ShapesConfig()))


def ensure_shapes(
    root: Optional[str] = None,
    config: Optional[ShapesConfig] = None,
    force: bool = False,
    workers: Optional[int] = None,
) -> str:
    """Make sure ``root`` holds the data set of ``config``, generating it if needed.

    Safe under concurrency and interruption (see :func:`.generated_cache.ensure_generated`).

    Args:
        root: data set folder; default :func:`default_root`.
        config: generation parameters; default ``ShapesConfig()``.
        force: regenerate even if an up-to-date data set exists, and replace a folder that is
            not a shapes data set (otherwise that is an error, to never delete a user's files).
        workers: processes that render it (see :func:`generate_shapes`).

    Returns:
        ``root``.
    """
    root = root if root is not None else default_root()
    config = config or ShapesConfig()
    return ensure_generated(
        root,
        _manifest_identity(config),
        # Looked up at call time, so tests can observe (monkeypatch) the generation.
        lambda folder: generate_shapes(folder, config, workers),
        description="shapes data set",
        force=force,
    )


def main(argv: Optional[List[str]] = None) -> int:
    defaults = ShapesConfig()
    parser = argparse.ArgumentParser(
        prog="python -m clusterformer.data.datasets.shapes",
        description="Generate the synthetic shapes data set (COCO instance/panoptic/semantic "
        "formats plus classification folders). Does nothing if it is already up to date.",
    )
    parser.add_argument(
        "--root", default=default_root(), help="output folder (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that render scenes (default: the CPUs available, at most 8)",
    )
    for field in dataclasses.fields(ShapesConfig):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=int,
            default=getattr(defaults, field.name),
            help="default: %(default)s",
        )
    args = parser.parse_args(argv)
    config = ShapesConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(ShapesConfig)}
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    root = ensure_shapes(args.root, config, force=args.force, workers=args.workers)
    print(json.dumps(read_manifest(root)["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
