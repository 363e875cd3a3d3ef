#!/usr/bin/env python
"""Inference time of the eager model, its TorchScript trace and its ONNX Runtime export on the
CPU, measured in one run (the three alternate repeat by repeat, so a change in the machine's
load slows them alike and the ratios stay meaningful on a shared machine).

    python -m tools.deploy.benchmark_export --threads 1 --output docs/benchmarks/deployment_cpu

Models (random weights; time does not depend on them), built from the model core, so this runs
without detectron2:

* ``nano``: the shapes panoptic model (configs/shapes/panoptic-segmentation/clusterformer_nano.yaml:
  nano backbone, 64-d pixel decoder with 2 deformable layers, 20 queries, 6 decoder layers,
  mask-shape class inputs);
* ``tiny``: the paper's COCO panoptic model with the tiny backbone (256-d pixel decoder with 6
  layers, 100 queries, 9 decoder layers, 133 classes).

Each is exported at one square size (``--sizes nano=160 tiny=512``). Eager runs the compiled
deformable-attention kernels where they are built (what a user of the eager model gets); the
exports run the pure-PyTorch reference they were traced with. Writes ``<output>.json`` and
``<output>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from clusterformer.deploy import ExportedModel, export
from clusterformer.deploy.export import exportable
from clusterformer.modeling.ops import extension_available
from clusterformer.modeling.segmenter import build_clusterformer_segmenter
from tools.benchmark.common import (
    MAKE_RUN_DECODER_KWARGS,
    MAKE_RUN_PIXEL_DECODER_KWARGS,
    load_average,
    median_seconds,
    run_metadata,
    time_alternating,
)

BACKENDS = ("eager", "torchscript", "onnxruntime")


def build_model(name: str) -> torch.nn.Module:
    """The benchmarked segmenters (see the module docstring), random weights, eval mode."""
    torch.manual_seed(0)
    if name == "nano":
        model = build_clusterformer_segmenter(
            7,
            backbone="nano",
            pixel_decoder_kwargs=MAKE_RUN_PIXEL_DECODER_KWARGS,
            decoder_kwargs=MAKE_RUN_DECODER_KWARGS,
        )
    elif name == "tiny":
        model = build_clusterformer_segmenter(133, backbone="tiny")
    else:
        raise ValueError(f"unknown model {name!r}; expected nano or tiny")
    return model.eval()


def parse_sizes(values: List[str]) -> Dict[str, int]:
    sizes = {}
    for value in values:
        name, _, size = value.partition("=")
        if not size.isdigit() or int(size) % 32:
            raise ValueError(
                f"--sizes: expected MODEL=SIZE with SIZE a multiple of 32, got {value}"
            )
        sizes[name] = int(size)
    return sizes


def benchmark(name: str, size: int, args: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    model = build_model(name)
    module, _, _ = exportable(model)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    names = exportable(model)[2]
    with torch.no_grad():
        reference = dict(zip(names, module(images)))
    export_seconds = {}
    runners = {}
    for fmt, backend in (("torchscript", "torchscript"), ("onnx", "onnxruntime")):
        start = time.perf_counter()
        path, _ = export(model, images, workdir / name, fmt)
        export_seconds[backend] = round(time.perf_counter() - start, 1)
        runners[backend] = ExportedModel(path, num_threads=args.threads)

    def eager() -> None:
        with torch.no_grad():
            module(images)

    fns = {
        "eager": eager,
        "torchscript": lambda: runners["torchscript"](images),
        "onnxruntime": lambda: runners["onnxruntime"](images),
    }
    # Differences from the eager outputs computed before any export; "eager" is the eager model
    # run again after the exports (exporting must leave the model as it was).
    with torch.no_grad():
        again = dict(zip(names, module(images)))
    outputs = {"eager": again, **{backend: runner(images) for backend, runner in runners.items()}}
    diffs = {
        backend: max(float((out[k] - reference[k]).abs().max()) for k in reference)
        for backend, out in outputs.items()
    }
    samples = time_alternating(fns, "cpu", args.warmup, args.repeats, args.timer)
    medians = median_seconds(samples)
    return {
        "model": name,
        "input": [1, 3, size, size],
        "median_ms": {k: round(v * 1e3, 2) for k, v in medians.items()},
        "ratio_to_eager": {k: round(medians["eager"] / v, 3) for k, v in medians.items()},
        "max_abs_diff_vs_eager": diffs,
        "export_seconds": export_seconds,
        "repeats": args.repeats,
    }


def markdown(results: List[Dict[str, Any]], meta: Dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Deployment: eager vs TorchScript vs ONNX Runtime (CPU)",
        "",
        f"`{meta['command']}`, {meta['date']}, revision {meta['revision']}, "
        f"{meta['device_name']}, {args.threads} thread(s), torch {meta['torch']}, "
        f"onnxruntime {meta['onnxruntime']}, compiled deformable-attention kernels in eager: "
        f"{meta['eager_uses_extension']}. Median of {args.repeats} repeats "
        f"({args.timer} time) after {args.warmup} warm-up runs, the three alternating; load "
        f"average {meta['load_average_before']} before, {meta['load_average_after']} after.",
        "Speed-up = eager time / time (higher is faster).",
        "",
        "Max abs diff: largest difference of any output from the eager outputs computed before "
        "the exports (eager again: the eager model rerun after them).",
        "",
        "| model | input | eager ms | TorchScript ms | ONNX Runtime ms | TorchScript speed-up "
        "| ONNX Runtime speed-up | max abs diff (TS / ORT / eager again) | export s (TS / ONNX) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        ms, ratio, diff, ex = (
            r["median_ms"],
            r["ratio_to_eager"],
            r["max_abs_diff_vs_eager"],
            r["export_seconds"],
        )
        lines.append(
            f"| {r['model']} | {r['input'][2]}x{r['input'][3]} | {ms['eager']} | "
            f"{ms['torchscript']} | {ms['onnxruntime']} | {ratio['torchscript']:.2f}x | "
            f"{ratio['onnxruntime']:.2f}x | {diff['torchscript']:.1e} / "
            f"{diff['onnxruntime']:.1e} / {diff['eager']:.1e} | {ex['torchscript']} / "
            f"{ex['onnxruntime']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["nano=160", "tiny=512"], help="MODEL=SIZE pairs"
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every backend")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall")
    parser.add_argument(
        "--output", default="docs/benchmarks/deployment_cpu", help="writes OUTPUT.json/.md"
    )
    args = parser.parse_args(argv)
    import onnxruntime

    torch.set_num_threads(args.threads)
    meta = run_metadata("cpu")
    meta["onnxruntime"] = onnxruntime.__version__
    meta["eager_uses_extension"] = extension_available("cpu")
    meta["load_average_before"] = load_average()
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, size in parse_sizes(args.sizes).items():
            result = benchmark(name, size, args, Path(workdir))
            print(json.dumps(result), flush=True)
            results.append(result)
    meta["load_average_after"] = load_average()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    )
    output.with_suffix(".md").write_text(markdown(results, meta, args))
    print(f"wrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
