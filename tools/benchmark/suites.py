"""The suites: the groups each one measures, the alternating timing of a group with its
parameters, GMACs and peak memory, and the ``torch.compile`` comparison."""

from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch

from clusterformer.modeling.backbone import build_clusterformer_backbone
from clusterformer.modeling.segmenter import build_clusterformer_segmenter
from tools.benchmark.common import median_seconds, time_alternating
from tools.benchmark.contenders import (
    Group,
    MainOutputs,
    contenders_of,
    image_inputs,
    main_output_keys,
)
from tools.benchmark.flops import count_gmacs
from tools.benchmark.memory import measure_memory
from tools.benchmark.peers import COCO_PANOPTIC_CLASSES
from tools.benchmark.steps import autocast, make_step

SUITES = ("backbones", "panoptic", "scaling", "components", "compile")
DEFAULT_SUITES = ("backbones", "panoptic", "scaling", "components")
MODES = ("inference", "train")


def measure_group(
    group: Group, args: argparse.Namespace, flops_cache: Dict[tuple, dict]
) -> List[dict]:
    """Time the group's contenders alternately; add parameters, GMACs and peak memory."""
    device = args.device
    torch.manual_seed(0)
    models, steps, rows = {}, {}, []
    for c in group.contenders:
        model = c.build().to(device)
        inputs = c.inputs(group.batch, device)
        models[c.name] = (model, inputs)
        steps[c.name] = make_step(model, inputs, group.mode, device, args.amp, group.optimize)
    samples = time_alternating(steps, device, args.warmup, args.repeats, args.timer)
    latency = median_seconds(samples)
    for c in group.contenders:
        model, inputs = models[c.name]
        key = (group.suite, c.name, group.size)
        if key not in flops_cache and not args.no_flops:
            try:
                flops_cache[key] = count_gmacs(model, c.inputs(1, device))
            except Exception as e:  # fvcore's tracer cannot follow every model
                flops_cache[key] = {"gmacs": None, "error": f"{type(e).__name__}: {e}"[:300]}
        row = {
            "suite": group.suite,
            "model": c.name,
            "family": c.family,
            "size_class": c.size_class,
            "height": group.size[0],
            "width": group.size[1],
            "batch": group.batch,
            "mode": group.mode if group.optimize or group.mode == "inference" else "fwd+bwd",
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "latency_ms": latency[c.name] * 1e3,
            "samples_ms": [t * 1e3 for t in samples[c.name]],
            "throughput_img_s": group.batch / latency[c.name],
            "gmacs": flops_cache.get(key, {}).get("gmacs"),
            "flops_note": flops_cache.get(key, {}).get("error"),
        }
        row["peak_memory_mib"] = measure_memory(group, c, model, inputs, args)
        rows.append(row)
        print(
            f"[{group.suite}] {c.name:<45} {group.size[0]}x{group.size[1]} b{group.batch} "
            f"{row['mode']:<9} {row['latency_ms']:9.1f} ms  "
            + (f"{row['peak_memory_mib']:8.0f} MiB  " if row["peak_memory_mib"] else "")
            + (f"{row['gmacs']:7.2f} GMACs" if row["gmacs"] else ""),
            flush=True,
        )
    del models, steps
    return rows


def suite_groups(suite: str, args: argparse.Namespace) -> List[Group]:
    """The groups a suite measures: (input size, batch, mode) cases, each with the suite's
    contenders (:func:`contenders_of`, which the memory child processes rebuild too)."""
    square = lambda sizes: [(s, s) for s in sizes]  # noqa: E731
    if suite == "backbones":
        cases = [
            (size, b, mode)
            for size in square(args.backbone_sizes)
            for b in args.batch_sizes
            for mode in MODES
        ]
    elif suite == "panoptic":
        cases = [(tuple(args.panoptic_size), 1, "inference")]
    elif suite == "scaling":
        cases = [(size, 1, "inference") for size in square(args.scaling_sizes)]
    elif suite == "components":
        cases = [(size, 1, mode) for size in square(args.component_sizes) for mode in MODES]
    else:
        raise ValueError(suite)
    return [
        Group(
            suite,
            contenders_of(suite, size, args.size_classes),
            size,
            batch,
            mode,
            # Components: forward + backward only, no optimiser step.
            optimize=suite != "components",
        )
        for size, batch, mode in cases
    ]


def compile_rows(args: argparse.Namespace) -> List[dict]:
    """Eager against ``torch.compile`` for the ClusterFormer-T backbone and panoptic model."""
    rows = []
    cases = [
        ("ClusterFormer-T backbone", lambda: build_clusterformer_backbone("tiny"), s)
        for s in args.backbone_sizes
    ]
    h, w = args.panoptic_size
    cases.append(
        (
            "ClusterFormer-T panoptic",
            lambda: build_clusterformer_segmenter(COCO_PANOPTIC_CLASSES, backbone="tiny"),
            (h, w),
        )
    )
    for name, build, size in cases:
        size = (size, size) if isinstance(size, int) else size
        torch.manual_seed(0)
        model = build().to(args.device).eval()
        (x,) = image_inputs(*size)(1, args.device)
        compiled = torch.compile(model)
        start = time.perf_counter()
        with torch.no_grad(), autocast(args.device, args.amp):
            compiled(x)  # compiles
        compile_s = time.perf_counter() - start
        with torch.no_grad():
            eager_out = MainOutputs(model, main_output_keys(model))(x)
            compiled_out = MainOutputs(compiled, main_output_keys(model))(x)
        max_diff = max((a - b).abs().max().item() for a, b in zip(eager_out, compiled_out))
        steps = {
            "eager": make_step(model, (x,), "inference", args.device, args.amp, False),
            "compiled": make_step(compiled, (x,), "inference", args.device, args.amp, False),
        }
        latency = median_seconds(
            time_alternating(steps, args.device, args.warmup, args.repeats, args.timer)
        )
        row = {
            "model": name,
            "height": size[0],
            "width": size[1],
            "eager_ms": latency["eager"] * 1e3,
            "compiled_ms": latency["compiled"] * 1e3,
            "speedup": latency["eager"] / latency["compiled"],
            "compile_s": compile_s,
            "max_abs_diff": max_diff,
        }
        print(
            f"[compile] {name} {size[0]}x{size[1]}: eager {row['eager_ms']:.1f} ms, compiled "
            f"{row['compiled_ms']:.1f} ms ({row['speedup']:.2f}x), compile {compile_s:.0f} s, "
            f"max |diff| {max_diff:.1e}",
            flush=True,
        )
        rows.append(row)
    return rows
