#!/usr/bin/env python
"""The object-mask threshold of panoptic inference on the shapes model (an inference-time flag).

    OMP_NUM_THREADS=1 python tools/experiments/shapes_object_mask_threshold.py [--seeds 0 1 2]

Evaluates the three clustering-decoder checkpoints trained by
``tools/experiments/shapes_segmentation.py`` (run it first) with ``train_net.py --eval-only``
at several ``MODEL.CLUSTER_DECODER.TEST.OBJECT_MASK_THRESHOLD`` values (Mask2Former's 0.8 and
lower ones): after the short CPU schedule the class scores are low, and 0.8 drops almost every
thing segment. The shapes data set has no split besides train and val, so the threshold is
chosen on val; the table says by how much it matters. Results:
docs/experiments/shapes_object_mask_threshold.{json,md}.
"""

import argparse
import os
import sys

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.experiments.ablation import REPO, Variant, run_ablation
from tools.experiments.shapes_segmentation import CONFIG

THRESHOLDS = ("0.8", "0.4", "0.25", "0.1")
WEIGHTS = "output/experiments/shapes_seg/clustering/seed{seed}/model_final.pth"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", default=WEIGHTS, help="checkpoint path with {seed}")
    parser.add_argument(
        "--out-root", default=os.path.join(REPO, "output", "experiments", "shapes_mask_threshold")
    )
    args = parser.parse_args()
    run_ablation(
        title="Shapes panoptic inference: object-mask threshold (clustering decoder)",
        variants=[
            Variant(
                f"threshold_{t}",
                CONFIG,
                ["MODEL.CLUSTER_DECODER.TEST.OBJECT_MASK_THRESHOLD", t],
                f"object-mask threshold {t}",
                eval_weights=args.weights,
            )
            for t in THRESHOLDS
        ],
        seeds=args.seeds,
        metrics=[("panoptic_seg", "PQ"), ("panoptic_seg", "PQ_th"), ("panoptic_seg", "PQ_st")],
        out_root=args.out_root,
        report_name="shapes_object_mask_threshold",
        notes=(
            "The same checkpoints (the `make run` schedule, seeds 0-2) evaluated with "
            "COCOPanopticEvaluator on the 60 val images; only the threshold differs. The "
            "threshold applies to panoptic (and not to instance or semantic) inference."
        ),
    )


if __name__ == "__main__":
    main()
