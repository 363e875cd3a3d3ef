#!/usr/bin/env python
"""Shapes panoptic segmentation: the clustering decoder against ordinary masked cross-attention
(Mask2Former's), at the same budget and seeds (docs/method.md §2).

    OMP_NUM_THREADS=2 python tools/experiments/shapes_segmentation.py [--seeds 0 1 2]

Both variants train configs/shapes/panoptic-segmentation/clusterformer_nano.yaml from scratch
(the `make run` model and schedule) and are evaluated with COCOPanopticEvaluator (PQ),
COCOEvaluator (mask AP) and SemSegEvaluator (mIoU) on the val split.
Results: docs/experiments/shapes_segmentation.{json,md}.
"""

import argparse
import os
import sys

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.experiments.ablation import REPO, Variant, run_ablation

CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"


def variants():
    return [
        Variant("clustering", CONFIG, [], "recurrent cross-attention clustering (T = 3)"),
        Variant(
            "masked_attention",
            CONFIG,
            ["MODEL.CLUSTER_DECODER.CROSS_ATTENTION", "masked_attention"],
            "Mask2Former masked cross-attention",
        ),
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--out-root", default=os.path.join(REPO, "output", "experiments", "shapes_seg")
    )
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args()
    run_ablation(
        title="Shapes panoptic segmentation: clustering decoder vs masked cross-attention",
        variants=[v for v in variants() if not args.only or v.name in args.only],
        seeds=args.seeds,
        metrics=[("panoptic_seg", "PQ"), ("segm", "AP"), ("sem_seg", "mIoU")],
        out_root=args.out_root,
        report_name="shapes_segmentation",
        extra_opts=args.opts,
        notes=(
            "Budget: the `make run` schedule of the config (nano backbone from scratch, batch 8, "
            "AdamW); PQ from panopticapi, mask AP from pycocotools, mIoU from SemSegEvaluator on "
            "the 60 val images."
        ),
    )


if __name__ == "__main__":
    main()
