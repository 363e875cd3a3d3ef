"""scikit-learn's handwritten digits as a small, real classification data set (no download).

The 1,797 8x8 grey images (values 0..16) ship inside scikit-learn. On first use they are written as
class folders (the ImageNet layout) under ``$DETECTRON2_DATASETS/digits``::

    manifest.json
    {train,val}/{0..9}/<index>.png     # 32 x 32 grey PNG, bilinear upsampling of the 8x8 digit

The split is stratified (20 % of each class to val, rounded: 1,438 / 359 images) with a fixed seed, so every run and
every machine sees the same split. Generation is cached and safe under concurrency (see
:mod:`.generated_cache`). This module needs numpy, Pillow and scikit-learn only.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from .dataset_paths import datasets_root
from .generated_cache import ensure_generated, write_manifest

GENERATOR_VERSION = 1
CLASS_NAMES = [str(d) for d in range(10)]
SPLITS = ("train", "val")
IMAGE_SIZE = 32
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def default_root() -> str:
    return os.path.join(datasets_root(), "digits")


def _identity() -> dict:
    return {
        "generator": "clusterformer.data.datasets.digits",
        "version": GENERATOR_VERSION,
        "params": {"image_size": IMAGE_SIZE, "val_fraction": VAL_FRACTION, "seed": SPLIT_SEED},
    }


def split_indices(labels: np.ndarray) -> Dict[str, np.ndarray]:
    """Stratified split: per class, a seeded permutation, the first ``VAL_FRACTION`` to val."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * VAL_FRACTION))
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return {"train": np.sort(train), "val": np.sort(val)}


def _generate(root: str) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    counts = {}
    for split, indices in split_indices(digits.target).items():
        for c in CLASS_NAMES:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
        for i in indices:
            image = Image.fromarray(images[i], mode="L").resize(
                (IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR
            )
            image.save(os.path.join(root, split, str(digits.target[i]), f"{i:04d}.png"))
        counts[split] = int(len(indices))
    write_manifest(root, {**_identity(), "counts": counts})


def ensure_digits(root: Optional[str] = None, force: bool = False) -> str:
    """Make sure ``root`` (default ``$DETECTRON2_DATASETS/digits``) holds the digits class folders."""
    root = root if root is not None else default_root()
    return ensure_generated(
        root, _identity(), _generate, description="digits data set", force=force
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="default: $DETECTRON2_DATASETS/digits")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    print(ensure_digits(args.root, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
