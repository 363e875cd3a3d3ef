#!/usr/bin/env python
"""What limits how fast the `make run` model learns the thing classes: one-factor changes to the
training recipe of configs/shapes/panoptic-segmentation/clusterformer_nano.yaml, same budget.

    python tools/experiments/shapes_convergence.py --seeds 0 --jobs 2 [--only VARIANT ...]

Each variant trains the shapes panoptic nano model from scratch for the config's schedule and is
evaluated on the 60 val images with COCOPanopticEvaluator (PQ, PQ_th), COCOEvaluator (box / mask
AP of the instance output, boxes from the masks) and SemSegEvaluator (mIoU). Finished runs under
``--out-root`` are reused, so an interrupted experiment resumes. Results:
docs/experiments/shapes_convergence.{json,md}; decisions: docs/design_choices.md.
"""

import os
import sys

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.experiments.ablation import Variant, experiment_parser, run_ablation, selected

CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"
SCREENING_SEEDS = (0,)
NOTES = (
    "Screening rows: one seed, the `make run` recipe plus the changes named. The recipe itself, "
    "3 seeds, is in shapes_segmentation.md (`clustering`). Boxes are those of the instance output "
    "(from the masks). "
    "Run times are wall clock of runs sharing the 2 cores with other work."
)
# The recipe these variants changed (from scratch, no mask crops, 1000 iterations on the
# 300-scene set, no auxiliary losses), spelt out so that they stay what they were: the config
# has changed since (tools/experiments/shapes_thing_classes.py).
BEFORE = [
    "MODEL.WEIGHTS", "",
    "MODEL.CLUSTER_DECODER.MASK_SHAPE_RESOLUTION", "0",
    "MODEL.CLUSTER_DECODER.SEMANTIC_WEIGHT", "0.0",
    "MODEL.CLUSTER_DECODER.MASK_ID_WEIGHT", "0.0",
    "DATASETS.TRAIN", '("shapes_panoptic_train",)',
    "SOLVER.MAX_ITER", "1000",
    "SOLVER.STEPS", "(900,)",
]  # fmt: skip
AUX = [
    "MODEL.CLUSTER_DECODER.SEMANTIC_WEIGHT",
    "1.0",
    "MODEL.CLUSTER_DECODER.MASK_ID_WEIGHT",
    "1.0",
]
LARGE = ["DATASETS.TRAIN", '("shapes3k_panoptic_train",)']


def variants():
    def screen(name, opts, description):
        return Variant(name, CONFIG, BEFORE + opts, description, seeds=SCREENING_SEEDS)

    return [
        screen("lr_2e-3", ["SOLVER.BASE_LR", "0.002"], "before, 4x the learning rate"),
        Variant(
            "aux_losses",
            CONFIG,
            BEFORE + AUX,
            "the recipe + semantic and mask-id losses (weight 1 each)",
            seeds=(0, 1, 2),
        ),
        screen(
            "aux_points_256",
            AUX + ["MODEL.CLUSTER_DECODER.TRAIN_NUM_POINTS", "256"],
            "aux_losses with 256 instead of 1024 points per mask",
        ),
        screen("aux_3k", AUX + LARGE, "aux_losses on the 3000-scene training set"),
        screen(
            "aux_3k_semantic_5",
            ["MODEL.CLUSTER_DECODER.SEMANTIC_WEIGHT", "5.0"]
            + ["MODEL.CLUSTER_DECODER.MASK_ID_WEIGHT", "1.0"]
            + LARGE,
            "aux_3k with semantic weight 5",
        ),
        screen(
            "aux_3k_queries_10",
            AUX + LARGE + ["MODEL.CLUSTER_DECODER.NUM_OBJECT_QUERIES", "10"],
            "aux_3k with 10 instead of 20 queries",
        ),
        Variant(
            "aux_3k_1500it",
            CONFIG,
            AUX + LARGE + ["SOLVER.MAX_ITER", "1500", "SOLVER.STEPS", "(1350,)"],
            "aux_3k for 1500 iterations (step at 1350)",
            seeds=(1, 2),
        ),
    ]


METRICS = [
    ("panoptic_seg", "PQ"),
    ("panoptic_seg", "PQ_th"),
    ("segm", "AP"),
    ("bbox", "AP"),
    ("sem_seg", "mIoU"),
]


def run_shapes_panoptic_experiment(doc, title, all_variants, report_name, notes):
    """The command line and the run of a shapes panoptic experiment; every such experiment
    shares the run folder ``output/experiments/shapes_convergence``, so runs are reused."""
    args = experiment_parser(doc, "shapes_convergence").parse_args()
    run_ablation(
        title=title,
        variants=selected(all_variants, args.only),
        seeds=args.seeds,
        metrics=METRICS,
        out_root=args.out_root,
        report_name=report_name,
        extra_opts=args.opts,
        jobs=args.jobs,
        all_variants=all_variants,
        notes=notes,
    )


def main():
    run_shapes_panoptic_experiment(
        __doc__,
        "Shapes panoptic: what makes the thing classes learn faster",
        variants(),
        "shapes_convergence",
        NOTES,
    )


if __name__ == "__main__":
    main()
