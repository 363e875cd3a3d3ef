#!/usr/bin/env python
"""Does the decoder's initialisation explain the gap between the two decoders? The cross-attentions'
projections drawn one Xavier matrix each (``separate``, the default) or as Mask2Former's packed
query / key / value matrix (``packed``), for the clustering decoder and for masked attention.

    python tools/experiments/shapes_decoder_init.py --seeds 0 1 2 --jobs 2 [--only VARIANT ...]

Every variant trains the `make run` model (configs/shapes/panoptic-segmentation/
clusterformer_nano.yaml) for 2000 iterations in one process, as `make run` did when the
experiment started (it now trains 1500 in two processes), and is evaluated on the 60 val images
with COCOPanopticEvaluator (PQ, PQ_th), COCOEvaluator (box / mask AP) and SemSegEvaluator
(mIoU). Finished runs under ``--out-root`` are reused, so an interrupted experiment resumes.
Results: docs/experiments/shapes_decoder_init.{json,md}; decision: docs/design_choices.md
(``CROSS_ATTENTION_INIT``).
"""

import os
import sys

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.experiments.ablation import Variant
from tools.experiments.shapes_convergence import run_shapes_panoptic_experiment
from tools.experiments.shapes_thing_classes import TWICE

CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"
NOTES = (
    "The `make run` model at 2000 iterations (lr / 10 at 1800), one process; the variants "
    "differ only in "
    "MODEL.CLUSTER_DECODER.CROSS_ATTENTION and MODEL.CLUSTER_DECODER.CROSS_ATTENTION_INIT. "
    "Boxes are those of the instance output (from the masks)."
)


def variants():
    def variant(decoder, init):
        opts = TWICE + ["MODEL.CLUSTER_DECODER.CROSS_ATTENTION", decoder]
        opts += ["MODEL.CLUSTER_DECODER.CROSS_ATTENTION_INIT", init]
        return Variant(f"{decoder}_{init}", CONFIG, opts, f"{decoder}, {init} projection init")

    return [
        variant(d, i) for d in ("clustering", "masked_attention") for i in ("separate", "packed")
    ]


def main():
    run_shapes_panoptic_experiment(
        __doc__,
        "Shapes panoptic: the decoders' projection initialisation",
        variants(),
        "shapes_decoder_init",
        NOTES,
    )


if __name__ == "__main__":
    main()
