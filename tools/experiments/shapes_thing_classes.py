#!/usr/bin/env python
"""The `make run` model finds its things once it can tell their classes: what made the
difference. One-factor changes to the earlier recipe of
configs/shapes/panoptic-segmentation/clusterformer_nano.yaml (1000 iterations, 300 scenes, from
scratch), and their combination, which is today's `make run` recipe.

    python tools/experiments/shapes_thing_classes.py --jobs 2 [--only VARIANT ...]

Same evaluation as tools/experiments/shapes_convergence.py (60 val images; PQ, PQ_th, mask and
box AP of the instance output, mIoU), and the same run folder, so runs are shared and an
interrupted experiment resumes. Why these changes: tools/experiments/shapes_thing_diagnosis.py
shows that the earlier recipe's masks find most things while their classes are at chance.
Results: docs/experiments/shapes_thing_classes.{json,md}; decisions: docs/design_choices.md.
"""

import os
import sys

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.experiments.ablation import Variant
from tools.experiments.shapes_convergence import BEFORE, run_shapes_panoptic_experiment

CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"
# BEFORE: the earlier `make run` recipe, spelt out (from scratch, 300 scenes, no mask crops).
# The backbone pre-trained on the large set's 20,000 classification images
# (tools/experiments/shapes_pretraining.py, `pretrain`; float16).
PRETRAINED = ["MODEL.WEIGHTS", "checkpoints/shapes/clusterformer_nano_shapes_cls.pth"]
CLASS_10 = ["MODEL.CLUSTER_DECODER.CLASS_WEIGHT", "10.0"]
SHAPE = ["MODEL.CLUSTER_DECODER.MASK_SHAPE_RESOLUTION", "16"]
# 3000 training scenes with 3 to 8 things each (the val split is the default's).
DENSE = ["DATASETS.TRAIN", '("shapes_dense_panoptic_train",)']
# The 2-core budget of `make run` (15 minutes with the environment) holds about 1200 iterations:
# the 1000-iteration fresh-clone run took 12 min 15 s, about 0.42 s per iteration on 2 threads.
LONGER = ["SOLVER.MAX_ITER", "1200", "SOLVER.STEPS", "(1080,)"]
# Twice the iterations (lr / 10 at 90%, as in `make run`): what the budget holds once the
# training step is faster (docs/benchmarks.md).
TWICE = ["SOLVER.MAX_ITER", "2000", "SOLVER.STEPS", "(1800,)"]
# Three quarters of TWICE (lr / 10 at 90%): what 15 minutes of `make run` hold with its two
# training processes of one thread each (0.81x the time per iteration of one process on two
# threads, docs/benchmarks.md).
THREE_QUARTERS = ["SOLVER.MAX_ITER", "1500", "SOLVER.STEPS", "(1350,)"]
# An exponential moving average of the weights, evaluated instead of them (MODEL_EMA), with a
# horizon of about 1 / (1 - decay) = 100 iterations, the length of the decayed-lr phase.
EMA = ["MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "0.99"]
# Instance masks (and the boxes taken from them) keep their largest connected region only, or
# (False, spelt out) every region, as rows measured before the flag existed did.
LARGEST_COMPONENT = ["MODEL.CLUSTER_DECODER.TEST.INSTANCE_LARGEST_COMPONENT", "True"]
ALL_COMPONENTS = ["MODEL.CLUSTER_DECODER.TEST.INSTANCE_LARGEST_COMPONENT", "False"]
# The decoders' cross-attention projections drawn as Mask2Former's packed query / key / value
# matrix (docs/experiments/shapes_decoder_init.md: ahead at 2000 iterations on every seed).
PACKED_INIT = ["MODEL.CLUSTER_DECODER.CROSS_ATTENTION_INIT", "packed"]
EMA_RUN_WEIGHTS = (
    "output/experiments/shapes_convergence/make_run_ema_0.99/seed{seed}/model_final.pth"
)
SCREENING_SEEDS = (0,)
MAKE_RUN = BEFORE + DENSE + PRETRAINED + SHAPE
NOTES = (
    "Screening rows: one seed. Each variant is the earlier recipe (`before`) plus the changes "
    "named; options later in the list override earlier ones. Boxes are those of the instance "
    "output (from the masks). Run times are wall clock of runs sharing the 2 cores. The "
    "decoder's CROSS_ATTENTION_INIT default was `separate` until the `packed_init` rows made it "
    "`packed`: every row whose options do not name it trained with `separate`."
)


def variants():
    def screen(name, opts, description):
        return Variant(name, CONFIG, BEFORE + opts, description, seeds=SCREENING_SEEDS)

    def two_processes(name, opts, description):
        # `make run` as it trains now: in two processes of one thread each (`--num-gpus 2`).
        opts = MAKE_RUN + LARGEST_COMPONENT + opts
        return Variant(name, CONFIG, opts, description, seeds=(0, 1, 2), processes=2)

    return [
        screen("before", [], "the earlier `make run` recipe"),
        screen("class_weight_10", CLASS_10, "class loss and matching cost weight 10 (not 2)"),
        screen(
            "pretrained_class_weight_10",
            PRETRAINED + CLASS_10,
            "class_weight_10 from the pre-trained backbone",
        ),
        screen("dense", DENSE, "the crowded 3000-scene training set"),
        screen("dense_pretrained", DENSE + PRETRAINED, "dense from the pre-trained backbone"),
        screen("mask_shape_16", SHAPE, "class heads read their masks' 16x16 box crops"),
        screen("dense_mask_shape_16", DENSE + SHAPE, "dense with the mask crops"),
        Variant(
            "dense_pretrained_mask_shape_16",
            CONFIG,
            BEFORE + DENSE + PRETRAINED + SHAPE,
            "all three: the `make run` recipe at 1000 iterations",
            seeds=(0, 1, 2),
        ),
        Variant(
            "make_run_1200_iterations",
            CONFIG,
            BEFORE + DENSE + PRETRAINED + SHAPE + LONGER,
            "all three at 1200 iterations (lr / 10 at 1080): what the 15 minutes of `make run` allow",
            seeds=(0, 1, 2),
        ),
        Variant(
            "make_run_ema_0.99",
            CONFIG,
            MAKE_RUN + EMA,
            "the `make run` recipe evaluated with an average of its weights (decay 0.99)",
            seeds=(0, 1, 2),
        ),
        # make_run_ema_0.99 trains exactly as `make run` does (the average is not fed back
        # and draws no random numbers), so its trained weights are the recipe's: the rows
        # below compare with it seed by seed.
        Variant(
            "make_run_trained_weights",
            CONFIG,
            MAKE_RUN + ALL_COMPONENTS,
            "make_run_ema_0.99's checkpoints evaluated with their trained weights, not the "
            "average (evaluation only): the `make run` recipe",
            eval_weights=EMA_RUN_WEIGHTS,
            seeds=(0, 1, 2),
        ),
        Variant(
            "make_run_largest_component",
            CONFIG,
            MAKE_RUN + LARGEST_COMPONENT,
            "make_run_trained_weights with each instance mask and its box reduced to the "
            "mask's largest connected region (evaluation only)",
            eval_weights=EMA_RUN_WEIGHTS,
            seeds=(0, 1, 2),
        ),
        Variant(
            "make_run_2000_iterations",
            CONFIG,
            MAKE_RUN + LARGEST_COMPONENT + TWICE,
            "the `make run` recipe (largest components) at 2000 iterations (lr / 10 at 1800)",
            seeds=(0, 1, 2),
        ),
        two_processes(
            "make_run_1500_iterations_2_processes",
            THREE_QUARTERS,
            "the `make run` recipe at 1500 iterations (lr / 10 at 1350) in two training "
            "processes of one thread each (`--num-gpus 2`, batch 4 each): what 15 minutes hold",
        ),
        two_processes(
            "make_run_1500_iterations_2_processes_packed_init",
            THREE_QUARTERS + PACKED_INIT,
            "make_run_1500_iterations_2_processes with the decoder's cross-attention projections "
            "initialised as one packed matrix (CROSS_ATTENTION_INIT packed)",
        ),
        two_processes(
            "make_run_1200_iterations_2_processes_packed_init",
            LONGER + PACKED_INIT,
            "make_run_1500_iterations_2_processes_packed_init at 1200 iterations (lr / 10 at "
            "1080): the 15 minutes with room for a slower machine",
        ),
    ]


def main():
    run_shapes_panoptic_experiment(
        __doc__,
        "Shapes panoptic: telling the thing classes apart",
        variants(),
        "shapes_thing_classes",
        NOTES,
    )


if __name__ == "__main__":
    main()
