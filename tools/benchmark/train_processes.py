#!/usr/bin/env python
"""Time `make run`'s training as Detectron2 runs it, in one process or in several.

    python -m tools.benchmark.train_processes [--processes 1 2] [--iterations 80] [--rounds 3]

Every run is ``train_net.py --num-gpus K`` of the shapes panoptic config (``MODEL.DEVICE cpu``,
gloo), with the same total batch: K processes of ``cpu_count // K`` threads each (what
``train_net.py`` gives them) take ``IMS_PER_BATCH / K`` images each and average their gradients.
The figure is Detectron2's own "Overall training speed" (seconds per iteration, the first
iterations left out), so data loading and the all-reduce are in it; the runs of one round
alternate process counts, so the ratios to the first count compare the same machine state.
Writes ``docs/benchmarks/train_processes_cpu<suffix>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence

from tools.benchmark.common import run_metadata

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"
SPEED = re.compile(r"Overall training speed: (\d+) iterations in \S+ \(([0-9.]+) s / it\)")


def seconds_per_iteration(log: str) -> float:
    """Detectron2's "Overall training speed" of a training log, in seconds per iteration."""
    match = SPEED.search(log)
    if match is None:
        raise ValueError("no 'Overall training speed' line in the training log")
    return float(match.group(2))


def train_once(processes: int, iterations: int, out_dir: str, opts: Sequence[str]) -> float:
    """Train ``iterations`` iterations in ``processes`` processes; seconds per iteration."""
    cmd = [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file",
        os.path.join(REPO, CONFIG),
        "--num-gpus",
        str(processes),
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.MAX_ITER",
        str(iterations),
        "SOLVER.STEPS",
        "()",
        "SOLVER.CHECKPOINT_PERIOD",
        str(10 * iterations),
        # No evaluation: only the training loop is timed.
        "DATASETS.TEST",
        "()",
        *opts,
        "OUTPUT_DIR",
        out_dir,
    ]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OMP_NUM_THREADS", None)  # train_net.py splits the cores among its processes
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"train_net.py --num-gpus {processes} failed ({proc.returncode}):\n"
            + proc.stderr[-4000:]
        )
    with open(os.path.join(out_dir, "log.txt")) as f:
        return seconds_per_iteration(f.read())


def markdown(result: dict) -> str:
    meta = result["metadata"]
    first = str(result["processes"][0])
    lines = [
        "# `make run` training: one process or several",
        "",
        f"`{meta['command']}` on {meta['date']}, revision {meta['revision']}, "
        f"{meta['device_name']} ({meta['cpu_count']} cores), torch {meta['torch']}. "
        f"{result['iterations']} iterations per run, total batch {result['batch']}; "
        "Detectron2's overall training speed; median over rounds.",
        "",
        "| processes | threads each | s / iteration | ms / image | ratio | per round (s / it) |",
        "|---|---|---|---|---|---|",
    ]
    first_median = result["median_seconds"][first]
    for k in map(str, result["processes"]):
        median = result["median_seconds"][k]
        cells = [
            k,
            str(result["threads"][k]),
            f"{median:.4f}",
            f"{1000 * median / result['batch']:.1f}",
            f"{median / first_median:.2f}x",
            ", ".join(f"{s:.4f}" for s in result["seconds"][k]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="SOLVER.IMS_PER_BATCH (total)")
    parser.add_argument("--suffix", default="")
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks"))
    args = parser.parse_args(argv)
    for k in args.processes:
        if k < 1 or args.batch % k:
            parser.error(f"--processes {k}: the batch {args.batch} must split evenly")
    seconds: Dict[str, List[float]] = {str(k): [] for k in args.processes}
    opts = ["SOLVER.IMS_PER_BATCH", str(args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k in args.processes:
                out_dir = os.path.join(tmp, f"round{r}_processes{k}")
                seconds[str(k)].append(train_once(k, args.iterations, out_dir, opts))
                print(f"[train_processes] round {r} processes {k}: {seconds[str(k)][-1]:.4f} s/it")
    cores = os.cpu_count() or 1
    result = {
        "metadata": run_metadata("cpu"),
        "processes": args.processes,
        "threads": {str(k): max(1, cores // k) for k in args.processes},
        "iterations": args.iterations,
        "batch": args.batch,
        "seconds": seconds,
        "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"train_processes_cpu{args.suffix}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    report = markdown(result)
    with open(stem + ".md", "w") as f:
        f.write(report)
    print(report)
    return result


if __name__ == "__main__":
    main()
