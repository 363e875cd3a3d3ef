#!/usr/bin/env python3
"""ADE20K labels -> Detectron2 labels, for ``ade20k_sem_seg_{train,val}`` (and the ADE20K panoptic
semantic evaluator).

The benchmark's ``ADEChallengeData2016/annotations/{training,validation}/*.png`` hold 0 for
"other" and 1..150 for the classes; this writes ``annotations_detectron2/{training,validation}/``
with every label minus one, so classes are 0..149 and "other" becomes 255 (the ignore label).

Usage: ``python datasets/prepare_ade20k_sem_seg.py [--workers N]`` (root: ``$DETECTRON2_DATASETS``)
(a progress bar per split on stderr: files done, rate and the time left).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

try:
    from clusterformer.utils.progress import map_with_progress
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from clusterformer.utils.progress import map_with_progress

NUM_CLASSES = 150


def convert_label_png(input_file: str, output_file: str) -> None:
    """Shift one label PNG by -1 (0 -> 255), checking it is an 8-bit map with labels <= 150."""
    with Image.open(input_file) as png:
        labels = np.asarray(png)
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(
            f"ADE20K label {input_file!r} is {labels.dtype} with shape {labels.shape}; "
            "expected a single-channel 8-bit PNG"
        )
    if labels.max(initial=0) > NUM_CLASSES:
        raise ValueError(
            f"ADE20K label {input_file!r} has label {labels.max()} > {NUM_CLASSES}; is it already "
            "converted (annotations_detectron2 holds 255 for ignore)?"
        )
    # uint8 arithmetic wraps 0 - 1 to 255, the ignore label.
    Image.fromarray(labels - np.uint8(1)).save(output_file)


def convert_split(annotation_dir: Path, output_dir: Path, workers: int) -> int:
    """Convert every PNG of ``annotation_dir`` into ``output_dir``; returns how many."""
    if not annotation_dir.is_dir():
        raise FileNotFoundError(
            f"The ADE20K annotation folder {str(annotation_dir)!r} does not exist; download "
            "ADEChallengeData2016 (see datasets/README.md) or set $DETECTRON2_DATASETS"
        )
    files = sorted(annotation_dir.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"No label PNGs in {str(annotation_dir)!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(str(f), str(output_dir / f.name)) for f in files]
    map_with_progress(convert_label_png, tasks, workers, annotation_dir.name)
    return len(tasks)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args(argv)

    root = Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
    ade_root = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        start = time.time()
        output_dir = ade_root / "annotations_detectron2" / split
        count = convert_split(ade_root / "annotations" / split, output_dir, args.workers)
        print(f"{split}: wrote {count} label PNGs to {output_dir} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
