#!/usr/bin/env python
"""Why a shapes panoptic checkpoint misses the things: its masks, or its classes?

    python tools/experiments/shapes_thing_diagnosis.py RUN_DIR [RUN_DIR ...] [--name NAME ...]

For every ground-truth thing of the 60 val images, the query whose mask (sigmoid > 0.5, at the
image resolution) overlaps it best: that IoU, and the class that query predicts (softmax over
the K + 1 logits of the final decoder layer). A model whose masks are right but whose classes are
not has a high "best IoU" and a low "class right"; the confusion matrix says which classes are
told apart. Each RUN_DIR is a `train_net.py` output folder (its ``config.yaml`` and
``model_final.pth``). Results: docs/experiments/shapes_thing_diagnosis.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

if not __package__:  # run as a file: see tools/__init__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.benchmark.common import code_revision
from tools.experiments.ablation import REPO

DATASET = "shapes_panoptic_val"
AREAS = ((0, 100), (100, 300), (300, 1000), (1000, None))


def diagnose(run_dir: str) -> Dict:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from panopticapi.utils import rgb2id
    from PIL import Image

    from clusterformer.d2.config_files import load_config
    from clusterformer.engine import Trainer
    from clusterformer.engine.checkpointer import ClusterFormerCheckpointer

    cfg = load_config(os.path.join(run_dir, "config.yaml"), ["MODEL.DEVICE", "cpu"])
    model = Trainer.build_model(cfg).eval()
    ClusterFormerCheckpointer(model).load(os.path.join(run_dir, "model_final.pth"))
    metadata = MetadataCatalog.get(DATASET)
    num_things = len(metadata.thing_classes)
    loader = Trainer.build_test_loader(cfg, DATASET)
    records = {d["image_id"]: d for d in DatasetCatalog.get(DATASET)}
    things: List[Dict] = []
    for (inputs,) in loader:
        with torch.no_grad():
            images = model.preprocess_images([inputs])
            features = model.backbone(images.tensor)
            mask_features, multi_scale = model.pixel_decoder(features)
            outputs = model.transformer_decoder(multi_scale, mask_features)
        record = records[inputs["image_id"]]
        height, width = inputs["image"].shape[-2:]
        if (height, width) != (record["height"], record["width"]):
            raise ValueError(f"{record['file_name']}: the test transform resized it")
        logits = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear"
        )
        masks = logits[0, :, :height, :width].sigmoid() > 0.5  # (Q, H, W)
        probs = outputs["pred_logits"][0].softmax(-1)  # (Q, K + 1)
        ids = torch.as_tensor(rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]))))
        for segment in record["segments_info"]:
            if not segment["isthing"]:
                continue
            target = ids == segment["id"]
            inter = (masks & target).flatten(1).sum(1).double()
            union = (masks | target).flatten(1).sum(1).double().clamp(min=1)
            query = int((inter / union).argmax())
            label = segment["category_id"]
            things.append(
                {
                    "area": int(target.sum()),
                    "best_iou": float(inter[query] / union[query]),
                    "label": label,
                    "predicted": int(probs[query].argmax()),
                    "p_label": float(probs[query, label]),
                    "p_no_object": float(probs[query, -1]),
                }
            )
    return summarize(things, num_things, metadata.stuff_classes)


def summarize(things: List[Dict], num_things: int, classes: List[str]) -> Dict:
    iou = np.array([t["best_iou"] for t in things])
    found = [t for t in things if t["best_iou"] > 0.5]
    confusion = np.zeros((num_things, len(classes) + 1), dtype=int)
    for t in found:
        confusion[t["label"], t["predicted"]] += 1
    by_area = []
    for low, high in AREAS:
        group = [t for t in things if t["area"] >= low and (high is None or t["area"] < high)]
        if group:
            by_area.append(
                {
                    "area": f"{low}-{high or 'inf'}",
                    "things": len(group),
                    "iou_above_0.5": float(np.mean([t["best_iou"] > 0.5 for t in group])),
                    "class_right": float(np.mean([t["predicted"] == t["label"] for t in group])),
                }
            )
    return {
        "things": len(things),
        "best_iou_median": float(np.median(iou)),
        "iou_above_0.5": float(np.mean(iou > 0.5)),
        "found_class_right": float(np.mean([t["predicted"] == t["label"] for t in found])),
        "found_predicted_no_object": float(
            np.mean([t["predicted"] == len(classes) for t in found])
        ),
        "found_p_label_median": float(np.median([t["p_label"] for t in found])),
        "confusion": confusion.tolist(),
        "confusion_columns": list(classes) + ["no object"],
        "by_area": by_area,
    }


def write_report(runs: Dict[str, Dict], out_dir: str, command: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    summary = {"date": stamp, "revision": code_revision(), "command": command, "runs": runs}
    with open(os.path.join(out_dir, "shapes_thing_diagnosis.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [
        "# Shapes panoptic: are the things' masks or their classes wrong?",
        "",
        f"Produced by `{command}` on {stamp} at revision {summary['revision']}.",
        "For each ground-truth thing of the 60 val images, the query whose mask overlaps it best.",
        "",
        "| run | things | median best IoU | IoU > 0.5 | of those: class right "
        "| predicted no object | median p(true class) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['things']} | {r['best_iou_median']:.2f} | {r['iou_above_0.5']:.2f} "
            f"| {r['found_class_right']:.2f} | {r['found_predicted_no_object']:.2f} "
            f"| {r['found_p_label_median']:.2f} |"
        )
    for name, r in runs.items():
        columns = r["confusion_columns"]
        lines += [
            "",
            f"Confusion of the found things (IoU > 0.5), `{name}` (rows: true class):",
            "",
            "| true \\ predicted | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for label, row in enumerate(r["confusion"]):
            lines.append(f"| {columns[label]} | " + " | ".join(str(v) for v in row) + " |")
    with open(os.path.join(out_dir, "shapes_thing_diagnosis.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="train_net.py output folders")
    parser.add_argument("--name", nargs="*", help="a name per run (default: folder names)")
    parser.add_argument("--out-dir", default=os.path.join(REPO, "docs", "experiments"))
    args = parser.parse_args()
    names = args.name or [os.path.relpath(r, REPO) for r in args.runs]
    if len(names) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(names)} names")
    results = {}
    for name, run in zip(names, args.runs):
        for needed in ("config.yaml", "model_final.pth"):
            if not os.path.isfile(os.path.join(run, needed)):
                parser.error(f"{run} has no {needed}")
        results[name] = diagnose(run)
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "confusion"}))
    command = "python tools/experiments/shapes_thing_diagnosis.py " + " ".join(sys.argv[1:])
    write_report(results, args.out_dir, command)


if __name__ == "__main__":
    main()
