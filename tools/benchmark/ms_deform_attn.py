#!/usr/bin/env python
"""Benchmark the compiled multi-scale deformable attention kernels against the PyTorch reference.

Shapes follow Mask2Former's pixel decoder (encoder self-attention): three levels at strides
8/16/32 of a square image, every token of the encoder is a query, 8 heads, 4 points, 256 channels
(32 per head). Sampling locations are realistic: each query's own position plus offsets of a few
pixels of each level, so the kernels see the memory access pattern of a trained model.

For every configuration the script times forward (under ``no_grad``) and forward + backward of
``ms_deform_attn(..., use_extension=True)`` and ``use_extension=False``, alternating the two
implementations repeat by repeat after warm-up, and reports medians and ratios
(reference time / kernel time, > 1 means the kernel is faster). It also checks that both agree.

Writes ``<output-dir>/ms_deform_attn_<device>.json`` and ``.md`` (a Markdown table, also printed).

    python -m tools.benchmark.ms_deform_attn            # CPU (+ CUDA if present)
    python -m tools.benchmark.ms_deform_attn --quick    # tiny shapes, smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, List

import torch

from clusterformer.modeling.ops import extension_available, ms_deform_attn
from tools.benchmark.common import (
    TIMER_HELP,
    TIMERS,
    load_average,
    median_seconds,
    run_metadata,
    time_alternating,
)

STRIDES = (8, 16, 32)
HEADS, POINTS, CHANNELS = 8, 4, 256


def make_inputs(batch: int, image_size: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Encoder self-attention inputs for a square image; see the module docstring."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(image_size // s, image_size // s) for s in STRIDES]
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S, L, M, P, D = int(sizes.sum()), len(shapes), HEADS, POINTS, CHANNELS // HEADS
    # Each query sits at the centre of its own token (in whichever level it comes from).
    centres = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
        )
        centres.append(torch.stack([xs, ys], -1).reshape(-1, 2))
    reference = torch.cat(centres).expand(batch, S, 2)
    # Offsets of about two pixels of each level, as learned offsets are.
    pixel = torch.tensor([[1.0 / w, 1.0 / h] for h, w in shapes]).view(1, 1, 1, L, 1, 2)
    offsets = torch.randn(batch, S, M, L, P, 2, generator=generator) * 2.0 * pixel
    locations = reference[:, :, None, None, None, :] + offsets
    logits = torch.randn(batch, S, M, L * P, generator=generator)
    weights = logits.softmax(-1).view(batch, S, M, L, P)
    value = torch.randn(batch, S, M, D, generator=generator)
    as_dev = {"device": device, "dtype": dtype}
    return (
        value.to(**as_dev),
        spatial_shapes.to(device),
        level_start_index.to(device),
        locations.to(**as_dev),
        weights.to(**as_dev),
    )


def bench_config(
    batch: int, image_size: int, device: str, dtype: torch.dtype, args: argparse.Namespace
) -> dict:
    warmup, repeats, timer = args.warmup, args.repeats, args.timer
    inputs = make_inputs(batch, image_size, device, dtype)
    value, spatial_shapes, level_start_index, locations, weights = inputs
    leaves = {
        impl: [t.clone().requires_grad_() for t in (value, locations, weights)]
        for impl in ("kernel", "reference")
    }
    grad_out = torch.randn(
        value.shape[0],
        locations.shape[1],
        value.shape[2] * value.shape[3],
        generator=torch.Generator().manual_seed(1),
    ).to(device=device, dtype=dtype)

    def forward(use_extension: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                ms_deform_attn(*inputs, use_extension=use_extension)

        return run

    def forward_backward(impl: str) -> Callable[[], None]:
        v, loc, w = leaves[impl]

        def run() -> None:
            for t in (v, loc, w):
                t.grad = None
            out = ms_deform_attn(
                v, spatial_shapes, level_start_index, loc, w, use_extension=impl == "kernel"
            )
            out.backward(grad_out)

        return run

    fwd = median_seconds(
        time_alternating(
            {"kernel": forward(True), "reference": forward(False)}, device, warmup, repeats, timer
        )
    )
    fwd_bwd = median_seconds(
        time_alternating(
            {"kernel": forward_backward("kernel"), "reference": forward_backward("reference")},
            device,
            warmup,
            repeats,
            timer,
        )
    )
    # The leaves hold the last backward's gradients: compare the two implementations.
    with torch.no_grad():
        out_k = ms_deform_attn(*inputs, use_extension=True).float()
        out_r = ms_deform_attn(*inputs, use_extension=False).float()
    grad_diffs = [
        (k.grad.float() - r.grad.float()).abs().max().item()
        for k, r in zip(leaves["kernel"], leaves["reference"])
    ]
    S = value.shape[1]
    return {
        "batch": batch,
        "image_size": image_size,
        "levels": spatial_shapes.tolist(),
        "tokens": S,
        "queries": locations.shape[1],
        "dtype": str(dtype).replace("torch.", ""),
        "forward_ms": {k: v * 1e3 for k, v in fwd.items()},
        "forward_backward_ms": {k: v * 1e3 for k, v in fwd_bwd.items()},
        "forward_speedup": fwd["reference"] / fwd["kernel"],
        "forward_backward_speedup": fwd_bwd["reference"] / fwd_bwd["kernel"],
        "max_abs_diff": {
            "output": (out_k - out_r).abs().max().item(),
            "grad_value": grad_diffs[0],
            "grad_sampling_locations": grad_diffs[1],
            "grad_attention_weights": grad_diffs[2],
        },
    }


def markdown_table(results: List[dict], device: str) -> str:
    lines = [
        "| batch | image | levels | queries | dtype | fwd kernel (ms) | fwd reference (ms) "
        "| fwd ratio | fwd+bwd kernel (ms) | fwd+bwd reference (ms) | fwd+bwd ratio |",
        "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        levels = "/".join(f"{h}x{w}" for h, w in r["levels"])
        lines.append(
            f"| {r['batch']} | {r['image_size']} | {levels} | {r['queries']} | {r['dtype']} "
            f"| {r['forward_ms']['kernel']:.1f} | {r['forward_ms']['reference']:.1f} "
            f"| {r['forward_speedup']:.1f}x "
            f"| {r['forward_backward_ms']['kernel']:.1f} "
            f"| {r['forward_backward_ms']['reference']:.1f} "
            f"| {r['forward_backward_speedup']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def run_device(device: str, dtypes: List[torch.dtype], args: argparse.Namespace) -> None:
    configs = [(b, s) for s in args.image_sizes for b in args.batch_sizes]
    results = []
    # Other processes on a shared machine slow multi-threaded runs down; the load average at the
    # start and the end says how quiet the machine was.
    load_before = load_average()
    for dtype in dtypes:
        for batch, image_size in configs:
            r = bench_config(batch, image_size, device, dtype, args)
            print(
                f"[{device}] batch {batch} image {image_size} {r['dtype']}: "
                f"fwd {r['forward_speedup']:.1f}x, fwd+bwd {r['forward_backward_speedup']:.1f}x "
                f"(kernel {r['forward_backward_ms']['kernel']:.1f} ms, "
                f"reference {r['forward_backward_ms']['reference']:.1f} ms)",
                flush=True,
            )
            results.append(r)
    meta = {
        **run_metadata(device),
        "load_average_1_5_15min": {"start": load_before, "end": load_average()},
        "heads": HEADS,
        "points": POINTS,
        "channels": CHANNELS,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "statistic": "median",
        "timer": TIMER_HELP[args.timer],
        "ratio": "reference time / kernel time",
    }
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, f"ms_deform_attn_{device}{args.suffix}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    table = markdown_table(results, device)
    header = (
        f"Multi-scale deformable attention, {device} ({meta['device_name']}, "
        f"{meta['torch_threads']} threads), torch {meta['torch']}, {meta['date']}, "
        f"load average {load_before[:1]} -> {meta['load_average_1_5_15min']['end'][:1]}\n"
        f"Command: `{meta['command']}`; median of {args.repeats} after {args.warmup} warm-up; "
        f"{meta['timer']}; ratio = reference time / kernel time.\n\n"
    )
    with open(stem + ".md", "w") as f:
        f.write(header + table)
    print("\n" + header + table, flush=True)
    print(f"wrote {stem}.json and {stem}.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--image-sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--timer", choices=sorted(TIMERS), default="wall", help=TIMER_HELP["cpu"])
    parser.add_argument("--output-dir", default="docs/benchmarks")
    parser.add_argument("--suffix", default="", help="appended to the output file names")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.image_sizes, args.repeats = [1], [128], 2
        args.suffix = args.suffix or "_quick"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timer == "cpu" and torch.get_num_threads() != 1:
        parser.error("--timer cpu is only meaningful with --threads 1")
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for device in devices:
        if not extension_available(device):
            sys.exit(
                f"clusterformer._C has no {device} kernels: build it first "
                "(python setup.py build_ext --inplace; FORCE_CUDA=1 for the CUDA kernels)"
            )
        dtypes = [torch.float32]
        if device == "cuda":
            dtypes += [torch.float16, torch.bfloat16]
        run_device(device, dtypes, args)


if __name__ == "__main__":
    main()
