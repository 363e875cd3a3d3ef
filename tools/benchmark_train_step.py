#!/usr/bin/env python
"""Time the training step of the `make run` model and of recipe variants, in one process.

    python tools/benchmark_train_step.py [--threads 2] [--rounds 5] \
        [--variant NAME KEY VALUE ...] ...

Every variant is the shapes panoptic config plus its ``KEY VALUE`` overrides, built once; one
round times one training step (forward, losses, backward, optimiser step) of every variant in
turn, on batches drawn beforehand from its own training loader (data loading is not timed), so
the variants share the machine's state and the ratios are comparable even on a noisy machine.
Reports the median seconds per step and per image and the ratio to the first variant, and where
the first variant's step goes (image preparation, backbone, pixel decoder, decoder, criterion
with the matcher and point sampling, backward, optimiser; plus loading one batch, which the
loader's worker overlaps with training); writes ``docs/benchmarks/train_step_cpu.{json,md}``.
Needs detectron2 (the reference environment).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))
from benchmark_common import code_revision  # noqa: E402

CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"
DEFAULT_VARIANTS = [
    ("make_run", []),
    ("points_256", ["MODEL.CLUSTER_DECODER.TRAIN_NUM_POINTS", "256"]),
    ("batch_16", ["SOLVER.IMS_PER_BATCH", "16"]),
    (
        "auxiliary_losses",
        [
            "MODEL.CLUSTER_DECODER.SEMANTIC_WEIGHT",
            "1.0",
            "MODEL.CLUSTER_DECODER.MASK_ID_WEIGHT",
            "1.0",
        ],
    ),
]


PARTS = ("prepare", "backbone", "pixel_decoder", "decoder", "criterion", "backward", "optimizer")


class Contender:
    """One variant: its model, optimiser and a few training batches."""

    def __init__(self, name: str, opts: Sequence[str], num_batches: int):
        from clusterformer.config_files import load_config
        from clusterformer.engine import Trainer

        self.name, self.opts = name, list(opts)
        cfg = load_config(os.path.join(REPO, CONFIG), ["DATALOADER.NUM_WORKERS", "0", *opts])
        self.batch_size = cfg.SOLVER.IMS_PER_BATCH
        self.model = Trainer.build_model(cfg).train()
        self.optimizer = Trainer.build_optimizer(cfg, self.model)
        loader = Trainer.build_train_loader(cfg)
        loader.reset(0, cfg.SEED)
        iterator = iter(loader)
        start = time.perf_counter()
        self.batches = [next(iterator) for _ in range(num_batches)]
        self.load_seconds = (time.perf_counter() - start) / num_batches
        loader.close()
        self.seconds: List[float] = []

    def profiled_step(self, index: int) -> Dict[str, float]:
        """One step, timed part by part (the parts the meta-architecture's forward chains)."""
        model, batch = self.model, self.batches[index % len(self.batches)]
        marks = [time.perf_counter()]
        images = model.preprocess_images(batch)
        targets = model.prepare_targets([x["instances"] for x in batch], images)
        marks.append(time.perf_counter())
        features = model.backbone(images.tensor)
        marks.append(time.perf_counter())
        mask_features, multi_scale = model.pixel_decoder(features)
        marks.append(time.perf_counter())
        outputs = model.transformer_decoder(multi_scale, mask_features)
        marks.append(time.perf_counter())
        losses = model.criterion.weight_losses(model.criterion(outputs, targets))
        marks.append(time.perf_counter())
        self.optimizer.zero_grad()
        sum(losses.values()).backward()
        marks.append(time.perf_counter())
        self.optimizer.step()
        marks.append(time.perf_counter())
        return {part: b - a for part, a, b in zip(PARTS, marks, marks[1:])}

    def step(self, index: int) -> float:
        batch = self.batches[index % len(self.batches)]
        start = time.perf_counter()
        losses = self.model(batch)
        self.optimizer.zero_grad()
        sum(losses.values()).backward()
        self.optimizer.step()
        return time.perf_counter() - start


def run(variants, threads: int, rounds: int, warmup: int) -> Dict:
    from detectron2.utils.events import EventStorage

    torch.set_num_threads(threads)
    contenders = [Contender(name, opts, num_batches=4) for name, opts in variants]
    with EventStorage(0):
        for i in range(warmup):
            for c in contenders:
                c.step(i)
        for i in range(rounds):
            for c in contenders:
                c.seconds.append(c.step(warmup + i))
        first = contenders[0]
        parts = [first.profiled_step(i) for i in range(rounds)]
    breakdown = {p: statistics.median(t[p] for t in parts) for p in PARTS}
    breakdown["load_batch"] = first.load_seconds
    base = statistics.median(contenders[0].seconds) / contenders[0].batch_size
    rows = []
    for c in contenders:
        median = statistics.median(c.seconds)
        rows.append(
            {
                "variant": c.name,
                "opts": c.opts,
                "batch_size": c.batch_size,
                "seconds_per_step": median,
                "seconds_per_image": median / c.batch_size,
                "ratio_per_image": median / c.batch_size / base,
                "all_seconds": c.seconds,
            }
        )
    return {
        "date": datetime.date.today().isoformat(),
        "revision": code_revision(),
        "torch": torch.__version__,
        "threads": threads,
        "rounds": rounds,
        "config": CONFIG,
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "rows": rows,
        "breakdown_of_first": breakdown,
    }


def write_report(summary: Dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "train_step_cpu.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [
        "# Training step of the `make run` model (CPU)",
        "",
        f"Produced by `{summary['command']}` on {summary['date']} at revision "
        f"{summary['revision']} (torch {summary['torch']}, {summary['threads']} threads, "
        f"median of {summary['rounds']} alternating rounds; data loading not timed).",
        "",
        "| variant | batch | s / step | s / image | per image vs first | overrides |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['variant']} | {r['batch_size']} | {r['seconds_per_step']:.3f} | "
            f"{r['seconds_per_image']:.4f} | {r['ratio_per_image']:.2f}x | "
            f"{' '.join(r['opts']) or '(config)'} |"
        )
    parts = summary["breakdown_of_first"]
    step = sum(v for k, v in parts.items() if k != "load_batch")
    lines += [
        "",
        f"Where a step of `{summary['rows'][0]['variant']}` goes (median of the rounds, timed "
        "part by part; the backward pass of every part is in `backward`):",
        "",
        "| part | s | share of the step |",
        "|---|---|---|",
    ]
    for name, seconds in parts.items():
        share = "" if name == "load_batch" else f"{100 * seconds / step:.0f}%"
        lines.append(f"| {name} | {seconds:.3f} | {share} |")
    with open(os.path.join(out_dir, "train_step_cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar=("NAME", "KEY VALUE"),
        help="a variant: its name and KEY VALUE overrides (default: the built-in list)",
    )
    parser.add_argument("--output-dir", default=os.path.join(REPO, "docs", "benchmarks"))
    args = parser.parse_args()
    variants = [(v[0], v[1:]) for v in args.variant] if args.variant else DEFAULT_VARIANTS
    for name, opts in variants:
        if len(opts) % 2:
            parser.error(f"variant {name!r}: overrides must be KEY VALUE pairs, got {opts}")
    summary = run(variants, args.threads, args.rounds, args.warmup)
    for r in summary["rows"]:
        print(
            f"{r['variant']:>22}: {r['seconds_per_step']:.3f} s/step, "
            f"{r['seconds_per_image']:.4f} s/image, {r['ratio_per_image']:.2f}x per image"
        )
    write_report(summary, args.output_dir)


if __name__ == "__main__":
    main()
