#!/usr/bin/env python
"""The paper's decoder against Mask2Former's where both have converged: the reference recipe
(configs/shapes/panoptic-segmentation/clusterformer_nano_reference.yaml, 10000 iterations) trained
once with the clustering decoder and once with masked cross-attention, evaluated every 1000
iterations on the 60 shapes val images.

    python tools/experiments/shapes_decoder_convergence.py \\
        output/shapes_panoptic_reference output/shapes_panoptic_reference_masked_attention

The clustering run is the reference model's own (``make reference-model``); the masked-attention
run is the same command with ``MODEL.CLUSTER_DECODER.CROSS_ATTENTION masked_attention`` and its own
``OUTPUT_DIR`` (``make decoder-convergence`` trains both, resumably). Writes
docs/experiments/shapes_decoder_convergence.{json,md} and
docs/images/shapes_decoder_convergence.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.experiments.ablation import REPO
from tools.experiments.shapes_reference import (
    CONFIG,
    _fmt,
    evaluations,
    provenance,
    write_report,
)

METRICS = ["panoptic_seg/PQ", "panoptic_seg/PQ_th", "segm/AP", "bbox/AP", "sem_seg/mIoU"]
ARMS = ("clustering", "masked_attention")
REPORT = os.path.join(REPO, "docs", "experiments", "shapes_decoder_convergence")
PLOT = os.path.join(REPO, "docs", "images", "shapes_decoder_convergence.png")


def run_curve(run_dir: str) -> Tuple[List[Dict[str, float]], Dict]:
    """The evaluations of one run (see :func:`shapes_reference.evaluations`), with its decoder
    checked against its config.yaml so that the arms cannot be swapped by the command line."""
    import yaml

    with open(os.path.join(run_dir, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    max_iter = int(cfg["SOLVER"]["MAX_ITER"])
    return evaluations(os.path.join(run_dir, "metrics.json"), max_iter), cfg


def decoder_of(cfg: Dict) -> str:
    decoder = (cfg.get("MODEL") or {}).get("CLUSTER_DECODER") or {}
    return str(decoder.get("CROSS_ATTENTION", "clustering"))


def comparison(curves: Dict[str, List[Dict[str, float]]]) -> List[Dict[str, float]]:
    """One row per iteration both arms were evaluated at: each metric for both arms and the
    difference clustering - masked attention."""
    by_iteration = [{row["iteration"]: row for row in curves[arm]} for arm in ARMS]
    common = sorted(set(by_iteration[0]) & set(by_iteration[1]))
    rows = []
    for iteration in common:
        row: Dict[str, float] = {"iteration": iteration}
        for metric in METRICS:
            a, b = (by_iteration[i][iteration][metric] for i in range(2))
            row[f"{ARMS[0]}:{metric}"] = a
            row[f"{ARMS[1]}:{metric}"] = b
            row[f"difference:{metric}"] = a - b
        rows.append(row)
    return rows


def plot(curves: Dict[str, List[Dict[str, float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS) - 1, figsize=(14, 3.6), sharex=True)
    for ax, metric in zip(axes, METRICS[:-1]):
        for arm, style in zip(ARMS, ("-o", "--s")):
            curve = curves[arm]
            ax.plot([r["iteration"] for r in curve], [r[metric] for r in curve], style, label=arm)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("iteration (batch 8)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("60 shapes val images")
    axes[0].legend(fontsize=8)
    fig.suptitle("Clustering decoder vs masked cross-attention, reference recipe, seed 0")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(report: Dict) -> str:
    lines = [
        "# Clustering decoder against masked attention, trained to convergence (shapes panoptic)",
        "",
        f"Produced by `{report['command']}` on {report['date']} at revision {report['revision']} "
        f"({report['machine']}). Both runs: {CONFIG} (10000 iterations, learning rate ÷10 at "
        "9000, seed 0, one thread each, trained side by side); the masked-attention run adds "
        "`MODEL.CLUSTER_DECODER.CROSS_ATTENTION masked_attention`. Instance masks and boxes as "
        "configured (largest connected region).",
        "",
        "| iteration | "
        + " | ".join(f"{m} clustering / masked / Δ" for m in METRICS[:-1])
        + " | mIoU clustering / masked |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for row in report["rows"]:
        cells = [
            f"{_fmt(row[f'clustering:{m}'])} / {_fmt(row[f'masked_attention:{m}'])} / "
            f"{row[f'difference:{m}']:+.2f}"
            for m in METRICS[:-1]
        ]
        miou = METRICS[-1]
        cells.append(f"{_fmt(row[f'clustering:{miou}'])} / {_fmt(row[f'masked_attention:{miou}'])}")
        lines.append(f"| {row['iteration']} | " + " | ".join(cells) + " |")
    lines += ["", "![curves](../images/shapes_decoder_convergence.png)", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clustering_run")
    parser.add_argument("masked_attention_run")
    args = parser.parse_args(argv)
    curves, configs = {}, {}
    for arm, run_dir in zip(ARMS, (args.clustering_run, args.masked_attention_run)):
        curves[arm], configs[arm] = run_curve(run_dir)
        if decoder_of(configs[arm]) != arm:
            parser.error(
                f"{run_dir}/config.yaml trains the {decoder_of(configs[arm])} decoder, not {arm}"
            )
    report = {
        **provenance("tools/experiments/shapes_decoder_convergence.py", argv),
        "config": CONFIG,
        "curves": curves,
        "rows": comparison(curves),
    }
    write_report(REPORT, report, markdown(report))
    plot(curves, PLOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
