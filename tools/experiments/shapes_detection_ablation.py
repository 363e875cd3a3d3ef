#!/usr/bin/env python
"""Box-level clustering vs. the same decoder without the box restriction, on shapes (CPU).

Trains ``configs/shapes/detection/clusterformer_nano.yaml`` through ``train_net.py`` twice per
seed, with ``MODEL.CLUSTER_DECODER.BOX_RESTRICTED_ASSIGNMENT`` True and False and everything else
equal (iterations, schedule, seed: the same initialisation and data order), evaluates box AP with
COCOEvaluator on ``shapes_instance_val``, and writes a JSON record and a Markdown table::

    python tools/experiments/shapes_detection_ablation.py --iterations 500 --seeds 0 1 2

Each run is a ``nice``-d ``train_net.py`` subprocess of the experiments' shared runner
(:func:`tools.experiments.ablation.run_variant`) with one OpenMP thread (on a shared 2-core
machine, more threads spin rather than compute); a finished run is reused, so an interrupted
experiment resumes. Use ``--iterations 20 --seeds 0 --no-write`` first to measure the time per
iteration. Outputs: ``docs/experiments/detection_box_restriction.{json,md}``; runs in
``output/detection_box_restriction/<iterations>_iterations/<arm>/seed<k>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
from typing import Dict, List

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.experiments.ablation import REPO, Variant, run_variant

CONFIG = "configs/shapes/detection/clusterformer_nano.yaml"
ARMS = {"box_restricted": True, "unrestricted": False}
METRICS = ("AP", "AP50", "AP75", "APs", "APm")
BATCH_SIZE = 8
CPU_SECONDS_FILE = "run_cpu_seconds.txt"


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def arm_variant(arm: str, iterations: int) -> Variant:
    """The detection config with the arm's box restriction and the ``iterations`` budget."""
    # Decay the learning rate once, at 90 % of the run (the shapes recipe decays at 87 %).
    decay_at = max(1, int(round(0.9 * iterations)))
    opts = [
        "MODEL.CLUSTER_DECODER.BOX_RESTRICTED_ASSIGNMENT",
        str(ARMS[arm]),
        "SOLVER.IMS_PER_BATCH",
        str(BATCH_SIZE),
        "SOLVER.MAX_ITER",
        str(iterations),
        "SOLVER.STEPS",
        f"({decay_at},)",
        "SOLVER.WARMUP_ITERS",
        str(min(50, iterations // 5)),
        "SOLVER.CHECKPOINT_PERIOD",
        str(10 * iterations),
    ]
    return Variant(arm, CONFIG, opts)


def run_once(arm: str, seed: int, iterations: int, output_root: str) -> Dict[str, object]:
    """Train + evaluate one arm / seed with the shared runner (one thread, ``nice``-d; a finished
    run is reused); returns its bbox metrics and costs."""
    variant = arm_variant(arm, iterations)
    # One folder per budget: a short timing run is never reused for a longer one.
    out_root = os.path.join(output_root, f"{iterations}_iterations")
    output_dir = os.path.join(out_root, arm, f"seed{seed}")
    cpu_path = os.path.join(output_dir, CPU_SECONDS_FILE)
    reused = os.path.isfile(os.path.join(output_dir, "eval_results.json"))
    cpu_before = children_cpu_seconds()
    run = run_variant(variant, seed, out_root, (), threads=1, nice=10)
    if reused:
        with open(cpu_path) as f:
            cpu = float(f.read())
    else:
        cpu = children_cpu_seconds() - cpu_before
        with open(cpu_path, "w") as f:
            f.write(f"{cpu:.1f}")
    bbox = run["results"]["bbox"]
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if "total_loss" in r]
    opts = [*variant.opts, "SEED", str(seed), "OUTPUT_DIR", output_dir]
    return {
        "arm": arm,
        "seed": seed,
        "metrics": {k: float(bbox[k]) for k in METRICS if k in bbox},
        "final_total_loss": train[-1]["total_loss"] if train else None,
        "seconds_per_iteration": train[-1].get("time") if train else None,
        "cpu_seconds": round(cpu, 1),
        "wall_seconds": None if run["seconds"] is None else round(run["seconds"], 1),
        "command": " ".join(["python", "train_net.py", "--config-file", CONFIG, *opts]),
    }


def summarize(runs: List[Dict[str, object]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Per arm and metric: mean, sample standard deviation and the per-seed values."""
    summary: Dict[str, Dict[str, Dict[str, float]]] = {}
    for arm in ARMS:
        arm_runs = [r for r in runs if r["arm"] == arm]
        summary[arm] = {}
        for metric in METRICS:
            values = [r["metrics"][metric] for r in arm_runs if metric in r["metrics"]]
            values = [v for v in values if v == v]  # NaN: no object of that size in the split
            if not values:
                continue
            summary[arm][metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
    return summary


def markdown(record: Dict[str, object]) -> str:
    summary = record["summary"]
    setup = record["setup"]
    lines = [
        "# Box-level clustering vs. no box restriction (shapes detection)",
        "",
        f"Written by `{setup['script']}`; config `{setup['config']}` (nano model, box-only "
        "decoder, sigmoid focal loss); the arms differ only in "
        "`MODEL.CLUSTER_DECODER.BOX_RESTRICTED_ASSIGNMENT`.",
        "",
        f"Budget per run: {setup['iterations']} iterations at batch {setup['batch_size']} "
        f"(learning rate x0.1 at iteration {setup['decay_at']}), seeds {setup['seeds']}, "
        "evaluated once at the end with COCOEvaluator (bbox) on `shapes_instance_val` "
        "(60 images). Mean ± sample standard deviation over the seeds (per-seed values in "
        "brackets).",
        "",
        "| box restriction | " + " | ".join(f"box {m}" for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for arm, label in (("box_restricted", "on (box-level clustering)"), ("unrestricted", "off")):
        cells = []
        for metric in METRICS:
            stats = summary[arm].get(metric)
            if stats is None:
                cells.append("n/a")
                continue
            values = ", ".join(f"{v:.2f}" for v in stats["values"])
            cells.append(f"{stats['mean']:.2f} ± {stats['std']:.2f} [{values}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    delta = {
        m: summary["box_restricted"][m]["mean"] - summary["unrestricted"][m]["mean"]
        for m in METRICS
        if m in summary["box_restricted"] and m in summary["unrestricted"]
    }
    lines += [
        "",
        "Difference of the means (on - off): "
        + ", ".join(f"{m} {v:+.2f}" for m, v in delta.items())
        + ".",
        "",
        f"Cost: {setup['total_cpu_minutes']:.1f} CPU minutes in all "
        f"({setup['machine']}); per run: "
        + ", ".join(
            f"{r['arm']}/seed {r['seed']}: {r['cpu_seconds']:.0f} s CPU" for r in record["runs"]
        )
        + ".",
        "",
        "Command:",
        "",
        "```",
        setup["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--output-root", default=os.path.join(REPO, "output", "detection_box_restriction")
    )
    parser.add_argument("--docs-dir", default=os.path.join(REPO, "docs", "experiments"))
    parser.add_argument("--no-write", action="store_true", help="print only (timing runs)")
    parser.add_argument(
        "--markdown-only",
        action="store_true",
        help="rewrite the Markdown table from the existing JSON record (no training)",
    )
    args = parser.parse_args()
    if args.markdown_only:
        with open(os.path.join(args.docs_dir, "detection_box_restriction.json")) as f:
            text = markdown(json.load(f))
        with open(os.path.join(args.docs_dir, "detection_box_restriction.md"), "w") as f:
            f.write(text)
        print(text)
        return 0

    runs = []
    for seed in args.seeds:
        for arm in ARMS:
            result = run_once(arm, seed, args.iterations, args.output_root)
            print(json.dumps(result), flush=True)
            runs.append(result)
    record = {
        "setup": {
            "script": "tools/experiments/shapes_detection_ablation.py",
            "command": "python tools/experiments/shapes_detection_ablation.py --iterations "
            f"{args.iterations} --seeds {' '.join(map(str, args.seeds))}",
            "config": CONFIG,
            "iterations": args.iterations,
            "decay_at": max(1, int(round(0.9 * args.iterations))),
            "batch_size": BATCH_SIZE,
            "seeds": args.seeds,
            "total_cpu_minutes": sum(r["cpu_seconds"] for r in runs) / 60,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores shared, 1 thread per run",
        },
        "runs": runs,
        "summary": summarize(runs),
    }
    text = markdown(record)
    print(text)
    if not args.no_write:
        os.makedirs(args.docs_dir, exist_ok=True)
        with open(os.path.join(args.docs_dir, "detection_box_restriction.json"), "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        with open(os.path.join(args.docs_dir, "detection_box_restriction.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
