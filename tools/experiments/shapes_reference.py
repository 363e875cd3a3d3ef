#!/usr/bin/env python
"""The reference model of the embedded data: its metrics over training, and those of the
published weights.

    python tools/experiments/shapes_reference.py [RUN_DIR]   # default output/shapes_panoptic_reference

``make reference-model`` trains configs/shapes/panoptic-segmentation/clusterformer_nano_reference.yaml
(evaluated every ``TEST.EVAL_PERIOD`` iterations on the 60 val images), publishes its weights in
float16 and re-evaluates them into ``RUN_DIR/published``, then runs this script. It reads
``RUN_DIR/metrics.json`` and ``RUN_DIR/published/eval_results.json`` and writes
docs/experiments/shapes_reference.{json,md} and docs/images/shapes_reference_curves.png. The
``published`` metrics are those tests/tools/experiments/test_reference_model.py re-evaluates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
from typing import Dict, List, Optional, Sequence

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.benchmark.common import code_revision
from tools.experiments.ablation import REPO

METRICS = [
    "panoptic_seg/PQ",
    "panoptic_seg/PQ_th",
    "panoptic_seg/PQ_st",
    "segm/AP",
    "bbox/AP",
    "sem_seg/mIoU",
]
CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano_reference.yaml"
REPORT = os.path.join(REPO, "docs", "experiments", "shapes_reference")
PLOT = os.path.join(REPO, "docs", "images", "shapes_reference_curves.png")


def evaluations(metrics_path: str, max_iter: Optional[int] = None) -> List[Dict[str, float]]:
    """The evaluations logged in a run's metrics.json, one per iteration (the last one logged
    wins when a resumed run repeated an iteration), sorted by iteration; each at the number of
    iterations trained (the final evaluation is logged one step past the last, so the count is
    capped at ``max_iter``)."""
    by_iteration: Dict[int, Dict[str, float]] = {}
    with open(metrics_path) as f:
        for line in f:
            entry = json.loads(line)
            if METRICS[0] in entry:
                trained = int(entry["iteration"]) + 1
                if max_iter is not None:
                    trained = min(trained, max_iter)
                by_iteration[trained] = {m: entry[m] for m in METRICS}
    if not by_iteration:
        raise ValueError(f"{metrics_path} holds no evaluation ({METRICS[0]} never logged)")
    return [{"iteration": i, **values} for i, values in sorted(by_iteration.items())]


def largest_component(config_path: str) -> bool:
    """``MODEL.CLUSTER_DECODER.TEST.INSTANCE_LARGEST_COMPONENT`` of a run's config.yaml (False
    where the key is absent)."""
    import yaml

    with open(config_path) as f:
        cfg = yaml.safe_load(f)
    test = cfg.get("MODEL", {}).get("CLUSTER_DECODER", {}).get("TEST", {})
    return bool(test.get("INSTANCE_LARGEST_COMPONENT", False))


def provenance(script: str, argv: Optional[Sequence[str]]) -> Dict[str, str]:
    """What a report records of how it was made: the command (``script`` with ``argv``, default
    the process's arguments), the date, the code revision and the machine."""
    return {
        "command": " ".join(["python", script, *(argv or sys.argv[1:])]),
        "date": datetime.date.today().isoformat(),
        "revision": code_revision(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
    }


def write_report(base: str, report: Dict, text: str) -> None:
    """Writes ``base``.json (``report``) and ``base``.md (``text``), and prints ``text``."""
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write(text)
    print(text)


def published_metrics(results_path: str) -> Dict[str, float]:
    with open(results_path) as f:
        results = json.load(f)
    return {m: float(results[m.split("/")[0]][m.split("/")[1]]) for m in METRICS}


def plot(curve: List[Dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    iterations = [row["iteration"] for row in curve]
    for metric in METRICS:
        ax.plot(iterations, [row[metric] for row in curve], marker="o", label=metric)
    ax.set_xlabel("iteration (batch 8)")
    ax.set_ylabel("metric on the 60 shapes val images")
    ax.set_title("ClusterFormer nano reference model (clustering decoder, seed 0)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def _components(largest: bool) -> str:
    return "reduced to their largest connected region" if largest else "with every region"


def markdown(report: Dict) -> str:
    lines = [
        "# The reference model of the embedded data (shapes panoptic)",
        "",
        f"Produced by `{report['command']}` on {report['date']} at revision {report['revision']} "
        f"({report['machine']}); the run was trained by `make reference-model` ({CONFIG}).",
        "",
        "| iteration | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for row in report["curve"]:
        values = " | ".join(_fmt(row[m]) for m in METRICS)
        lines.append(f"| {row['iteration']} | {values} |")
    published = report["published"]
    lines += [
        f"| **published** (float16, `{report['weights']}`) | "
        + " | ".join(f"**{_fmt(published[m])}**" for m in METRICS)
        + " |",
        "",
        "Every row but the last is the evaluation of the run at that iteration (float32), "
        f"instance masks and boxes {_components(report['curve_largest_component'])}. The last "
        "row re-evaluates the published float16 weights with the config as it is now "
        f"(tests/tools/experiments/test_reference_model.py checks it), instance masks and boxes "
        f"{_components(report['published_largest_component'])} "
        "(`MODEL.CLUSTER_DECODER.TEST.INSTANCE_LARGEST_COMPONENT`, docs/design_choices.md).",
        "",
        "![metrics over iterations](../images/shapes_reference_curves.png)",
        "",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", default="output/shapes_panoptic_reference")
    parser.add_argument(
        "--weights", default="checkpoints/shapes/clusterformer_nano_shapes_panoptic.pth"
    )
    args = parser.parse_args(argv)
    import yaml

    with open(os.path.join(args.run_dir, "config.yaml")) as f:
        max_iter = int(yaml.safe_load(f)["SOLVER"]["MAX_ITER"])
    curve = evaluations(os.path.join(args.run_dir, "metrics.json"), max_iter)
    published = published_metrics(os.path.join(args.run_dir, "published", "eval_results.json"))
    report = {
        **provenance("tools/experiments/shapes_reference.py", argv),
        "config": CONFIG,
        "weights": args.weights,
        "curve": curve,
        "curve_largest_component": largest_component(os.path.join(args.run_dir, "config.yaml")),
        "published": published,
        "published_largest_component": largest_component(
            os.path.join(args.run_dir, "published", "config.yaml")
        ),
    }
    write_report(REPORT, report, markdown(report))
    plot(curve, PLOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
