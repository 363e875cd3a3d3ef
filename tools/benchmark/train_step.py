#!/usr/bin/env python
"""Time the training step of the `make run` model and of recipe variants, in one process.

    python -m tools.benchmark.train_step [--threads 2] [--rounds 5] \
        [--variant NAME KEY VALUE ...] ... [--device cuda] [--amp] [--core]

Every variant is the shapes panoptic config plus its ``KEY VALUE`` overrides, built once; one
round times one training step (forward, losses, backward, optimiser step) of every variant in
turn, on batches drawn beforehand from its own training loader (data loading is not timed), so
the variants share the machine's state and the ratios are comparable even on a noisy machine.
Reports the median seconds per step and per image and the ratio to the first variant, and where
the first variant's step goes (image preparation, backbone, pixel decoder, decoder, criterion
with the matcher and point sampling, backward, optimiser; plus loading one batch, which the
loader's worker overlaps with training); writes
``docs/benchmarks/train_step_<device><suffix>.{json,md}``. Needs detectron2 (the reference
environment), except with ``--core``: the same model's modules, criterion and optimiser built
without detectron2 (:func:`build_core_model`), on scenes rendered by the shapes generator at the
size the training mapper crops to, for GPU machines where detectron2 is missing. ``--amp`` runs
the forward pass and the losses under bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import math
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from tools.benchmark.common import (
    MAKE_RUN_DECODER_KWARGS,
    MAKE_RUN_PIXEL_DECODER_KWARGS,
    code_revision,
    command_line,
    device_name,
    synchronize,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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

# The config values of the `make run` model that --core honours as variant overrides (the
# defaults are the config's); every other size of that model is fixed in build_core_model.
CORE_OVERRIDES = {
    "SOLVER.IMS_PER_BATCH": 8,
    "MODEL.CLUSTER_DECODER.TRAIN_NUM_POINTS": 1024,
    "MODEL.CLUSTER_DECODER.SEMANTIC_WEIGHT": 0.0,
    "MODEL.CLUSTER_DECODER.MASK_ID_WEIGHT": 0.0,
}
# The training mapper (coco_panoptic_lsj, INPUT.IMAGE_SIZE 160) crops every image to 160x160;
# shapes_dense scenes hold 3 to 8 things, and things under 24 visible pixels are void.
CORE_IMAGE_SIZE, CORE_THINGS, CORE_MIN_AREA = 160, (3, 8), 24
PIXEL_MEAN, PIXEL_STD = (123.675, 116.280, 103.530), (58.395, 57.120, 57.375)


def autocast(device: str, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


class TimedSteps:
    """Timing of a variant's training steps; subclasses build ``model`` (with ``backbone``,
    ``pixel_decoder``, ``transformer_decoder`` and ``criterion``), ``optimizer``, ``batches``,
    ``batch_size`` and ``load_seconds``, and say how a batch becomes images and targets."""

    def __init__(self, name: str, opts: Sequence[str], device: str, amp: bool):
        self.name, self.opts, self.device, self.amp = name, list(opts), device, amp
        self.seconds: List[float] = []
        self.last_loss = float("nan")

    def prepare(self, batch) -> Tuple[torch.Tensor, List[Dict[str, torch.Tensor]]]:
        raise NotImplementedError

    def losses(self, batch) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def _mark(self, marks: List[float]) -> None:
        synchronize(self.device)  # CUDA runs asynchronously: a part ends when its kernels do
        marks.append(time.perf_counter())

    def profiled_step(self, index: int) -> Dict[str, float]:
        """One step, timed part by part (the parts the meta-architecture's forward chains)."""
        model, batch = self.model, self.batches[index % len(self.batches)]
        marks: List[float] = []
        self._mark(marks)
        with autocast(self.device, self.amp):
            images, targets = self.prepare(batch)
            self._mark(marks)
            features = model.backbone(images)
            self._mark(marks)
            mask_features, multi_scale = model.pixel_decoder(features)
            self._mark(marks)
            outputs = model.transformer_decoder(multi_scale, mask_features)
            self._mark(marks)
            losses = model.criterion.weight_losses(model.criterion(outputs, targets))
            self._mark(marks)
        self.optimizer.zero_grad()
        sum(losses.values()).backward()
        self._mark(marks)
        self.optimizer_step()
        self._mark(marks)
        return {part: b - a for part, a, b in zip(PARTS, marks, marks[1:])}

    def step(self, index: int) -> float:
        batch = self.batches[index % len(self.batches)]
        synchronize(self.device)
        start = time.perf_counter()
        with autocast(self.device, self.amp):
            loss = sum(self.losses(batch).values())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer_step()
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self.last_loss = loss.item()  # read after timing: it waits for the device
        return seconds


class Contender(TimedSteps):
    """One variant: its model, optimiser and a few training batches (Detectron2's trainer)."""

    def __init__(
        self, name: str, opts: Sequence[str], num_batches: int, device: str = "cpu", amp=False
    ):
        from clusterformer.d2.config_files import load_config
        from clusterformer.engine import Trainer

        super().__init__(name, opts, device, amp)
        cfg = load_config(
            os.path.join(REPO, CONFIG),
            ["DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", device, *opts],
        )
        self.batch_size = cfg.SOLVER.IMS_PER_BATCH
        self.model = Trainer.build_model(cfg).train()
        self.optimizer = Trainer.build_optimizer(cfg, self.model)  # clips inside step()
        loader = Trainer.build_train_loader(cfg)
        loader.reset(0, cfg.SEED)
        iterator = iter(loader)
        start = time.perf_counter()
        self.batches = [next(iterator) for _ in range(num_batches)]
        self.load_seconds = (time.perf_counter() - start) / num_batches
        loader.close()

    def prepare(self, batch):
        images = self.model.preprocess_images(batch)
        targets = self.model.prepare_targets([x["instances"] for x in batch], images)
        return images.tensor, targets

    def losses(self, batch):
        return self.model(batch)


def build_core_model(
    overrides: Dict[str, float], package: str = "clusterformer"
) -> torch.nn.Module:
    """The `make run` model without detectron2: what ``Trainer.build_model`` builds from
    :data:`CONFIG` (nano backbone, 64-d pixel decoder with 2 deformable layers, 6-layer
    clustering decoder with 20 queries and mask-shape class inputs, 7 classes), as a
    ``ClusterFormerSegmenter`` with its ``criterion``; random init, as there (MODEL.WEIGHTS is
    loaded by the checkpointer, not by build_model). tests/tools/test_gpu_check.py checks its
    parameters against Trainer.build_model where detectron2 is installed. ``package``: the
    name the package is imported under (tools/compare_revisions.py imports a second revision
    under another name)."""

    def load(module: str, name: str):
        return getattr(importlib.import_module(f"{package}.modeling.{module}"), name)

    SetCriterion = load("criterion", "SetCriterion")
    HungarianMatcher = load("matcher", "HungarianMatcher")
    build_clusterformer_segmenter = load("segmenter", "build_clusterformer_segmenter")

    values = {**CORE_OVERRIDES, **overrides}
    points = int(values["MODEL.CLUSTER_DECODER.TRAIN_NUM_POINTS"])
    semantic = float(values["MODEL.CLUSTER_DECODER.SEMANTIC_WEIGHT"])
    mask_id = float(values["MODEL.CLUSTER_DECODER.MASK_ID_WEIGHT"])
    num_classes = 7
    model = build_clusterformer_segmenter(
        num_classes,
        backbone="nano",
        backbone_kwargs={"drop_path_rate": 0.0},
        pixel_decoder_kwargs=MAKE_RUN_PIXEL_DECODER_KWARGS,
        decoder_kwargs={**MAKE_RUN_DECODER_KWARGS, "semantic_head": semantic > 0},
    )
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=points)
    losses = ("labels", "masks") + (("mask_id",) if mask_id > 0 else ())
    model.criterion = SetCriterion(
        num_classes,
        matcher,
        eos_coef=0.1,
        mask_id_weight=mask_id,
        semantic_weight=semantic,
        losses=losses + (("semantic",) if semantic > 0 else ()),
        num_points=points,
    )
    return model


def core_scene_batch(rng: np.random.Generator, batch_size: int):
    """Training scenes as (uint8 images (B, 3, S, S), targets with contiguous labels: things
    0-3, stuff 4-6, as the panoptic mapper numbers them)."""
    from clusterformer.data.datasets.shapes_scene import STUFF_KINDS, THING_KINDS, render_scene

    size = CORE_IMAGE_SIZE
    images, targets = [], []
    for _ in range(batch_size):
        scene = render_scene(rng, size, size, *CORE_THINGS)
        labels, masks = [], []
        for index, thing in enumerate(scene.things):
            mask = scene.instances == index
            if mask.sum() >= CORE_MIN_AREA:
                labels.append(thing.kind)
                masks.append(mask)
        for kind in range(len(STUFF_KINDS)):
            mask = (scene.stuff == kind) & (scene.instances < 0)
            if mask.any():
                labels.append(len(THING_KINDS) + kind)
                masks.append(mask)
        images.append(torch.from_numpy(scene.image).permute(2, 0, 1))
        targets.append({"labels": torch.tensor(labels), "masks": torch.from_numpy(np.stack(masks))})
    return torch.stack(images), targets


class CoreContender(TimedSteps):
    """One variant of the detectron2-free model (:func:`build_core_model`): AdamW with the
    config's learning rate, weight decay and full-model gradient clipping."""

    def __init__(
        self, name: str, opts: Sequence[str], num_batches: int, device: str = "cpu", amp=False
    ):
        super().__init__(name, opts, device, amp)
        # Typed as the config's values (main() refuses keys outside CORE_OVERRIDES).
        overrides = {k: type(CORE_OVERRIDES[k])(float(v)) for k, v in zip(opts[::2], opts[1::2])}
        self.batch_size = int({**CORE_OVERRIDES, **overrides}["SOLVER.IMS_PER_BATCH"])
        self.model = build_core_model(overrides).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-4, weight_decay=0.05)
        self.mean = torch.tensor(PIXEL_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(PIXEL_STD, device=device).view(1, 3, 1, 1)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        self.batches = [core_scene_batch(rng, self.batch_size) for _ in range(num_batches)]
        self.load_seconds = (time.perf_counter() - start) / num_batches

    def prepare(self, batch):
        images, targets = batch
        images = (images.to(self.device).float() - self.mean) / self.std
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        return images, targets

    def losses(self, batch):
        images, targets = self.prepare(batch)
        outputs = self.model.predict(images)
        return self.model.criterion.weight_losses(self.model.criterion(outputs, targets))

    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


def run(
    variants, threads: int, rounds: int, warmup: int, device="cpu", amp=False, core=False
) -> Dict:
    torch.set_num_threads(threads)
    if core:
        storage = contextlib.nullcontext()
    else:
        from detectron2.utils.events import EventStorage

        storage = EventStorage(0)
    kind = CoreContender if core else Contender
    contenders = [kind(name, opts, 4, device, amp) for name, opts in variants]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with storage:
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
                "last_loss": c.last_loss,
            }
        )
    return {
        "date": datetime.date.today().isoformat(),
        "revision": code_revision(),
        "torch": torch.__version__,
        "device": device,
        "device_name": device_name(device),
        "amp": "bf16 autocast" if amp else None,
        "model": "core (without detectron2)" if core else "detectron2 Trainer",
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "threads": threads,
        "rounds": rounds,
        "config": CONFIG,
        "command": command_line("python"),
        "rows": rows,
        "breakdown_of_first": breakdown,
    }


def write_report(summary: Dict, out_dir: str, suffix: str = "") -> None:
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"train_step_{summary['device']}{suffix}")
    with open(stem + ".json", "w") as f:
        json.dump(summary, f, indent=2)
    device = summary["device"].upper() if summary["device"] == "cpu" else summary["device_name"]
    extras = [summary["amp"]] if summary["amp"] else []
    if summary["model"].startswith("core"):
        extras.append("model built without detectron2, rendered scenes")
    lines = [
        f"# Training step of the `make run` model ({device})",
        "",
        f"Produced by `{summary['command']}` on {summary['date']} at revision "
        f"{summary['revision']} (torch {summary['torch']}, {summary['threads']} threads, "
        f"median of {summary['rounds']} alternating rounds; data loading not timed"
        + "".join(f"; {e}" for e in extras)
        + ").",
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
    with open(stem + ".md", "w") as f:
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
    parser.add_argument("--suffix", default="", help="appended to the output file names")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (forward and losses)")
    parser.add_argument(
        "--core",
        action="store_true",
        help="without detectron2: the same model built from its modules, on rendered scenes "
        f"(variants may override {', '.join(CORE_OVERRIDES)})",
    )
    args = parser.parse_args()
    variants = [(v[0], v[1:]) for v in args.variant] if args.variant else DEFAULT_VARIANTS
    for name, opts in variants:
        if len(opts) % 2:
            parser.error(f"variant {name!r}: overrides must be KEY VALUE pairs, got {opts}")
    if args.core:
        for name, opts in variants:
            unknown = [k for k in opts[::2] if k not in CORE_OVERRIDES]
            if unknown:
                parser.error(
                    f"variant {name!r}: --core cannot override {unknown}; it honours "
                    f"{', '.join(CORE_OVERRIDES)}"
                )
    summary = run(
        variants, args.threads, args.rounds, args.warmup, args.device, args.amp, args.core
    )
    for r in summary["rows"]:
        print(
            f"{r['variant']:>22}: {r['seconds_per_step']:.3f} s/step, "
            f"{r['seconds_per_image']:.4f} s/image, {r['ratio_per_image']:.2f}x per image"
        )
    write_report(summary, args.output_dir, args.suffix)
    # A smoke run (tools/gpu_check.sh) must fail when reduced precision makes the losses blow up.
    diverged = [r["variant"] for r in summary["rows"] if not math.isfinite(r["last_loss"])]
    if diverged:
        sys.exit(f"non-finite training loss in {diverged}")


if __name__ == "__main__":
    main()
