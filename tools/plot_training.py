#!/usr/bin/env python
"""Draw the training curves of a run from Detectron2's ``metrics.json`` as PNG files.

    python tools/plot_training.py output/shapes_panoptic/metrics.json   # -> output/shapes_panoptic/plots/
    python tools/plot_training.py output/shapes_panoptic --output curves/

``metrics.json`` (written by train_net.py every ``SOLVER.LOG_PERIOD`` iterations and after each
evaluation) holds one JSON object per line with an ``iteration`` and scalars. This writes

* ``losses.png``: ``total_loss`` and the final decoder layer's loss terms (``loss_ce``,
  ``loss_mask``, ... ; the deep-supervision copies ``loss_*_<layer>`` are left out), log scale;
* ``lr.png``: the learning rate;
* ``evaluation.png`` (when the run was evaluated): one panel per evaluator task
  (``panoptic_seg``, ``bbox``, ``segm``, ``sem_seg``, ``classification``, ...) with its summary
  metrics (per-class ones such as ``IoU-<class>`` are left out).

A resumed run appends the iterations it recomputed after its checkpoint; the last value logged for
an iteration is drawn. A missing file or a line that is not a JSON object with a numeric
``iteration`` is an error naming the file and the line. Needs only matplotlib (Agg backend).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen

# ``loss_ce_3``: the loss of decoder layer 3 (deep supervision); ``loss_ce``: the final layer's.
AUXILIARY_LOSS = re.compile(r"_\d+$")
# Scalars the metric printer logs that are not curves of the model.
NOT_PLOTTED = {"iteration", "eta_seconds", "time", "data_time", "rank_data_time"}

Series = Dict[str, Dict[int, float]]


class MetricsFileError(ValueError):
    """``metrics.json`` is missing or malformed; the message names the file (and the line)."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(path: str) -> Series:
    """``{key: {iteration: value}}`` of every numeric scalar in ``path`` (later lines win)."""
    if not os.path.isfile(path):
        raise MetricsFileError(
            f"Metrics file {path!r} does not exist (train_net.py writes OUTPUT_DIR/metrics.json)"
        )
    series: Series = defaultdict(dict)
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise MetricsFileError(
                    f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno})"
                ) from error
            if not isinstance(record, dict):
                raise MetricsFileError(
                    f"{path} line {number}: expected a JSON object, got {type(record).__name__}"
                )
            iteration = record.get("iteration")
            if not _is_number(iteration) or iteration != int(iteration):
                raise MetricsFileError(
                    f"{path} line {number}: no integer 'iteration' (got {iteration!r})"
                )
            for key, value in record.items():
                if key in NOT_PLOTTED:
                    continue
                if not _is_number(value):
                    raise MetricsFileError(
                        f"{path} line {number}: {key!r} is {value!r}, not a number"
                    )
                series[key][int(iteration)] = float(value)
    if not series:
        raise MetricsFileError(f"{path} holds no metrics (is the run's first log line missing?)")
    return dict(series)


def _points(values: Dict[int, float]):
    iterations = sorted(values)
    return iterations, [values[i] for i in iterations]


def _plot_lines(path: str, title: str, curves: Series, ylabel: str, log: bool = False) -> str:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, values in curves.items():
        iterations, ys = _points(values)
        style = {"linewidth": 2.0} if name == "total_loss" else {"linewidth": 1.0}
        marker = "o" if len(iterations) < 20 else None
        axes.plot(iterations, ys, label=name, marker=marker, markersize=3, **style)
    finite = [v for values in curves.values() for v in values.values() if math.isfinite(v)]
    if log and finite and min(finite) > 0:
        axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel("iteration")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_evaluation(path: str, metrics: Dict[str, Series]) -> str:
    tasks = sorted(metrics)
    figure, axes_list = plt.subplots(
        len(tasks), 1, figsize=(8, 3.2 * len(tasks)), squeeze=False, sharex=True
    )
    for axes, task in zip(axes_list[:, 0], tasks):
        for name, values in sorted(metrics[task].items()):
            iterations, ys = _points(values)
            axes.plot(iterations, ys, label=name, marker="o", markersize=4)
        axes.set_title(task)
        axes.set_ylabel("value")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, ncol=3)
    axes_list[-1, 0].set_xlabel("iteration")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_training(metrics_path: str, output_dir: Optional[str] = None) -> List[str]:
    """Write the PNG curves of ``metrics_path`` (a ``metrics.json``, or the run folder holding
    it) into ``output_dir`` (default: ``plots/`` beside it); returns the files written."""
    if os.path.isdir(metrics_path):
        metrics_path = os.path.join(metrics_path, "metrics.json")
    series = read_metrics(metrics_path)
    if output_dir is None:
        output_dir = os.path.join(os.path.dirname(os.path.abspath(metrics_path)), "plots")
    os.makedirs(output_dir, exist_ok=True)
    written = []
    losses = {
        key: values
        for key, values in sorted(series.items())
        if "loss" in key and "/" not in key and not AUXILIARY_LOSS.search(key)
    }
    if "total_loss" in losses:  # first, so it is drawn under the terms and listed first
        losses = {"total_loss": losses.pop("total_loss"), **losses}
    if losses:
        written.append(
            _plot_lines(
                os.path.join(output_dir, "losses.png"), "training losses", losses, "loss", log=True
            )
        )
    if "lr" in series:
        written.append(
            _plot_lines(
                os.path.join(output_dir, "lr.png"),
                "learning rate",
                {"lr": series["lr"]},
                "learning rate",
            )
        )
    evaluation: Dict[str, Series] = defaultdict(dict)
    for key, values in series.items():
        task, _, name = key.partition("/")
        if name and "-" not in name:  # "sem_seg/mIoU"; not per-class "sem_seg/IoU-sky"
            evaluation[task][name] = values
    if evaluation:
        written.append(_plot_evaluation(os.path.join(output_dir, "evaluation.png"), evaluation))
    if not written:
        raise MetricsFileError(
            f"{metrics_path} has no losses, learning rate or evaluation metrics to draw "
            f"(keys: {', '.join(sorted(series))})"
        )
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("metrics", help="a metrics.json, or the run folder (OUTPUT_DIR) holding it")
    parser.add_argument("--output", help="folder of the PNG files (default: plots/ beside it)")
    args = parser.parse_args(argv)
    try:
        written = plot_training(args.metrics, args.output)
    except MetricsFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
