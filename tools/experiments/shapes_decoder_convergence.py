#!/usr/bin/env python
"""The paper's decoder against Mask2Former's where both have converged: the `make run` recipe for
10000 iterations (configs/shapes/panoptic-segmentation/clusterformer_nano_convergence.yaml) trained
with the clustering decoder and with masked cross-attention, one seed at a time, evaluated every
1000 iterations on the 60 shapes val images.

    python tools/experiments/shapes_decoder_convergence.py CLUSTERING_RUN MASKED_ATTENTION_RUN
    python tools/experiments/shapes_decoder_convergence.py --report   # only rebuild the report

``make decoder-convergence SEED=<n>`` trains both arms of one seed side by side (resumably) and
runs the first form, which records that seed's curves (both runs' ``SEED`` read from their
config.yaml, which must agree) in docs/experiments/shapes_decoder_convergence_runs/seed_<n>.json.
Either form then rebuilds docs/experiments/shapes_decoder_convergence.{json,md} and
docs/images/shapes_decoder_convergence.png from every recorded seed: the mean over seeds at each
iteration every seed reached, and each seed's own comparison.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.experiments.ablation import REPO
from tools.experiments.shapes_reference import (
    _fmt,
    evaluations,
    provenance,
    write_report,
)

CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano_convergence.yaml"
METRICS = ["panoptic_seg/PQ", "panoptic_seg/PQ_th", "segm/AP", "bbox/AP", "sem_seg/mIoU"]
ARMS = ("clustering", "masked_attention")
REPORT = os.path.join(REPO, "docs", "experiments", "shapes_decoder_convergence")
RUNS = os.path.join(REPO, "docs", "experiments", "shapes_decoder_convergence_runs")
PLOT = os.path.join(REPO, "docs", "images", "shapes_decoder_convergence.png")

Curves = Dict[str, List[Dict[str, float]]]


def run_curve(run_dir: str) -> Tuple[List[Dict[str, float]], Dict]:
    """The evaluations of one run (see :func:`shapes_reference.evaluations`) and its config.yaml,
    from which the decoder and the seed are checked, so that the command line cannot swap arms
    or mix seeds."""
    import yaml

    with open(os.path.join(run_dir, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    max_iter = int(cfg["SOLVER"]["MAX_ITER"])
    return evaluations(os.path.join(run_dir, "metrics.json"), max_iter), cfg


def decoder_of(cfg: Dict) -> str:
    decoder = (cfg.get("MODEL") or {}).get("CLUSTER_DECODER") or {}
    return str(decoder.get("CROSS_ATTENTION", "clustering"))


def seed_of(cfg: Dict) -> int:
    return int(cfg.get("SEED", -1))


def comparison(curves: Curves) -> List[Dict[str, float]]:
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


def summary(rows_by_seed: Dict[int, List[Dict[str, float]]]) -> List[Dict[str, float]]:
    """One row per iteration that any seed's comparison has, over the seeds that reached it
    (``seeds``; a stopped run counts only up to where it was evaluated): for each arm and metric
    the mean and the sample standard deviation (0 for one seed), the mean difference and the
    number of those seeds in which the clustering decoder is ahead."""
    by_seed = [{row["iteration"]: row for row in rows} for rows in rows_by_seed.values()]
    out = []
    for iteration in sorted(set().union(*by_seed)):
        reached = [rows[iteration] for rows in by_seed if iteration in rows]
        row: Dict[str, float] = {"iteration": iteration, "seeds": len(reached)}
        for metric in METRICS:
            for key in (*ARMS, "difference"):
                values = [seed_row[f"{key}:{metric}"] for seed_row in reached]
                row[f"{key}:{metric}"] = statistics.fmean(values)
                row[f"{key}:{metric}:std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"clustering_ahead:{metric}"] = sum(
                seed_row[f"difference:{metric}"] > 0 for seed_row in reached
            )
        out.append(row)
    return out


def record_seed(clustering_run: str, masked_attention_run: str, argv: Sequence[str]) -> str:
    """Write one seed's curves (both arms) under :data:`RUNS`; returns the file written. Raises
    ``ValueError`` naming the run whose decoder or seed is not what its place on the command line
    says."""
    curves, seeds = {}, {}
    for arm, run_dir in zip(ARMS, (clustering_run, masked_attention_run)):
        curves[arm], cfg = run_curve(run_dir)
        max_iter = int(cfg["SOLVER"]["MAX_ITER"])
        if decoder_of(cfg) != arm:
            raise ValueError(
                f"{run_dir}/config.yaml trains the {decoder_of(cfg)} decoder, not {arm}"
            )
        seeds[arm] = seed_of(cfg)
    if seeds[ARMS[0]] != seeds[ARMS[1]]:
        raise ValueError(
            f"the runs have different seeds ({clustering_run}: {seeds[ARMS[0]]}, "
            f"{masked_attention_run}: {seeds[ARMS[1]]}); compare one seed at a time"
        )
    seed = seeds[ARMS[0]]
    if seed < 0:
        raise ValueError(
            f"{clustering_run}/config.yaml has SEED {seed} (a random seed): a recorded seed "
            "must be fixed so that it can be re-run"
        )
    record = {
        **provenance("tools/experiments/shapes_decoder_convergence.py", argv),
        "config": CONFIG,
        "seed": seed,
        "max_iter": max_iter,
        # A run stopped before its schedule ended is recorded up to its last evaluation.
        "complete": all(curves[arm][-1]["iteration"] == max_iter for arm in ARMS),
        "curves": curves,
    }
    os.makedirs(RUNS, exist_ok=True)
    path = os.path.join(RUNS, f"seed_{seed}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return path


def recorded_seeds() -> Dict[int, Dict]:
    """Every seed recorded under :data:`RUNS`, by seed."""
    records = {}
    for path in glob.glob(os.path.join(RUNS, "seed_*.json")):
        with open(path) as f:
            record = json.load(f)
        records[int(record["seed"])] = record
    return dict(sorted(records.items()))


def plot(records: Dict[int, Dict], mean_rows: List[Dict[str, float]], path: str) -> None:
    """Each seed's curves thin, the mean over seeds thick, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS) - 1, figsize=(14, 3.6), sharex=True)
    colors = dict(zip(ARMS, ("tab:blue", "tab:orange")))
    for ax, metric in zip(axes, METRICS[:-1]):
        for arm in ARMS:
            for record in records.values():
                curve = record["curves"][arm]
                x, y = [r["iteration"] for r in curve], [r[metric] for r in curve]
                ax.plot(x, y, color=colors[arm], alpha=0.35, linewidth=0.8)
            x = [r["iteration"] for r in mean_rows]
            ax.plot(
                x,
                [r[f"{arm}:{metric}"] for r in mean_rows],
                "-o",
                color=colors[arm],
                markersize=3,
                label=f"{arm} (mean)",
            )
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("iteration (batch 8)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("60 shapes val images")
    axes[0].legend(fontsize=8)
    seeds = ", ".join(str(s) for s in records)
    fig.suptitle(f"Clustering decoder vs masked cross-attention, 10000 iterations, seeds {seeds}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mean_cell(row: Dict[str, float], metric: str) -> str:
    arms = " / ".join(
        f"{row[f'{arm}:{metric}']:.2f} ± {row[f'{arm}:{metric}:std']:.2f}" for arm in ARMS
    )
    ahead = f"{row[f'clustering_ahead:{metric}']}/{row['seeds']}"
    return f"{arms} / {row[f'difference:{metric}']:+.2f} ({ahead})"


def _seed_table(rows: List[Dict[str, float]]) -> List[str]:
    lines = [
        "| iteration | "
        + " | ".join(f"{m} clustering / masked / Δ" for m in METRICS[:-1])
        + " | mIoU clustering / masked |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for row in rows:
        cells = [
            f"{_fmt(row[f'clustering:{m}'])} / {_fmt(row[f'masked_attention:{m}'])} / "
            f"{row[f'difference:{m}']:+.2f}"
            for m in METRICS[:-1]
        ]
        miou = METRICS[-1]
        cells.append(f"{_fmt(row[f'clustering:{miou}'])} / {_fmt(row[f'masked_attention:{miou}'])}")
        lines.append(f"| {row['iteration']} | " + " | ".join(cells) + " |")
    return lines


def _stopped(rows: List[Dict[str, float]]) -> str:
    last = rows[-1]["iteration"] if rows else 0
    return f"stopped before the end of its schedule, last evaluated at iteration {last}"


def _other_configs(by_seed: Dict) -> str:
    """A sentence naming the seeds recorded with another config file than :data:`CONFIG` (seeds
    recorded before it existed name the file that held this recipe then), or ``""``."""
    seeds_of: Dict[str, List[str]] = {}
    for seed, record in by_seed.items():
        if record["config"] != CONFIG:
            seeds_of.setdefault(record["config"], []).append(str(seed))
    return "".join(
        (f" Seeds {', '.join(seeds)} were" if len(seeds) > 1 else f" Seed {seeds[0]} was")
        + f" recorded with {config}, which held this recipe before "
        f"{CONFIG} existed."
        for config, seeds in seeds_of.items()
    )


def markdown(report: Dict) -> str:
    seeds = report["seeds"]
    lines = [
        "# Clustering decoder against masked attention, trained to convergence (shapes panoptic)",
        "",
        f"Built by `{report['command']}` on {report['date']} at revision {report['revision']} "
        f"from the seeds recorded in `docs/experiments/shapes_decoder_convergence_runs/` "
        f"({len(seeds)}: {', '.join(str(s) for s in seeds)}). Every run: {CONFIG} (10000 "
        "iterations, learning rate ÷10 at 9000, one thread each, the two arms of a seed trained "
        "side by side by `make decoder-convergence SEED=<n>`); the masked-attention run adds "
        "`MODEL.CLUSTER_DECODER.CROSS_ATTENTION masked_attention`. Instance masks and boxes as "
        "configured (largest connected region)." + _other_configs(report["by_seed"]),
        "",
        f"## Mean over seeds {', '.join(str(s) for s in seeds)}",
        "",
        "Each cell: clustering mean ± standard deviation / masked attention mean ± standard "
        "deviation / mean difference (seeds in which the clustering decoder is ahead / seeds "
        "evaluated at that iteration).",
        "",
        "| iteration | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for row in report["mean"]:
        lines.append(
            f"| {row['iteration']} | " + " | ".join(_mean_cell(row, m) for m in METRICS) + " |"
        )
    lines += ["", "![curves](../images/shapes_decoder_convergence.png)", ""]
    for seed, record in report["by_seed"].items():
        lines += [
            f"## Seed {seed}",
            "",
            f"Recorded by `{record['command']}` on {record['date']} at revision "
            f"{record['revision']} ({record['machine']})"
            + ("." if record["complete"] else f": {_stopped(record['rows'])}."),
            "",
            *_seed_table(record["rows"]),
            "",
        ]
    return "\n".join(lines)


def build_report(argv: Sequence[str]) -> Dict:
    """The report over every recorded seed (see the module docstring); raises ``ValueError``
    when no seed is recorded."""
    records = recorded_seeds()
    if not records:
        raise ValueError(f"no seed recorded in {RUNS}: run the two-run form first")
    by_seed = {
        seed: {
            k: record[k] for k in ("command", "date", "revision", "machine", "config", "complete")
        }
        | {"rows": comparison(record["curves"])}
        for seed, record in records.items()
    }
    mean = summary({seed: entry["rows"] for seed, entry in by_seed.items()})
    report = {
        **provenance("tools/experiments/shapes_decoder_convergence.py", argv),
        "config": CONFIG,
        "seeds": list(records),
        "mean": mean,
        "by_seed": by_seed,
    }
    write_report(REPORT, report, markdown(report))
    plot(records, mean, PLOT)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clustering_run", nargs="?")
    parser.add_argument("masked_attention_run", nargs="?")
    parser.add_argument(
        "--report", action="store_true", help="only rebuild the report from the recorded seeds"
    )
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args.report:
            if not (args.clustering_run and args.masked_attention_run):
                parser.error("give both runs (clustering first), or --report")
            print("recorded", record_seed(args.clustering_run, args.masked_attention_run, argv))
        build_report(argv)
    except ValueError as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
