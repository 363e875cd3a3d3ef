#!/usr/bin/env python
"""Print the headline metrics of a finished run and where its outputs are.

    python tools/summarize_run.py output/shapes_panoptic

Reads ``eval_results.json`` written by ``train_net.py`` (Detectron2 evaluators' results) and
lists the visualisations and the training curves (``plots/``, drawn by
``tools/plot_training.py``). Exits non-zero when the run left no evaluation results.
"""

import argparse
import json
import os
import sys

HEADLINE_KEYS = {
    "panoptic_seg": ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"),
    "segm": ("AP", "AP50", "AP75"),
    "bbox": ("AP", "AP50", "AP75"),
    "sem_seg": ("mIoU", "fwIoU", "mACC", "pACC"),
    "classification": ("top1", "top5"),
}


def summarize(output_dir: str) -> int:
    path = os.path.join(output_dir, "eval_results.json")
    if not os.path.isfile(path):
        print(f"No evaluation results at {path}: did training finish?", file=sys.stderr)
        return 1
    with open(path) as f:
        results = json.load(f)
    # One data set: {task: {metric: value}}; several: {dataset: {task: {...}}}.
    per_dataset = results if all(k not in HEADLINE_KEYS for k in results) else {"": results}
    print("=" * 72)
    for dataset, tasks in per_dataset.items():
        if dataset:
            print(f"Data set: {dataset}")
        for task, metrics in tasks.items():
            # "sem_seg_TTA" (test-time augmentation) has the headline metrics of "sem_seg".
            headline = HEADLINE_KEYS.get(task, HEADLINE_KEYS.get(task.removesuffix("_TTA"), ()))
            keys = [k for k in headline if k in metrics] or list(metrics)[:6]
            line = "  ".join(f"{k} {float(metrics[k]):6.2f}" for k in keys)
            print(f"  {task:<15} {line}")
    print("-" * 72)
    print(f"Metrics (Detectron2 evaluators): {os.path.abspath(path)}")
    for name in ("visualizations", "inference"):
        folder = os.path.join(output_dir, name)
        if os.path.isdir(folder):
            n = sum(len(files) for _, _, files in os.walk(folder))
            print(f"{name.capitalize():<12} ({n} files): {os.path.abspath(folder)}")
    plots = os.path.join(output_dir, "plots")
    if os.path.isdir(plots):
        pngs = sorted(f for f in os.listdir(plots) if f.endswith(".png"))
        print(f"Training curves ({', '.join(pngs) or 'none'}): {os.path.abspath(plots)}")
    else:
        print(f"Training curves: python tools/plot_training.py {output_dir} (writes {plots})")
    for name in ("model_final.pth", "metrics.json", "log.txt"):
        if os.path.exists(os.path.join(output_dir, name)):
            print(f"{name:<16}: {os.path.abspath(os.path.join(output_dir, name))}")
    print("=" * 72)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output_dir")
    sys.exit(summarize(parser.parse_args().output_dir))
