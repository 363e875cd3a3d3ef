"""``python -m tools.benchmark``: the command line, the run of the suites and what it writes
(see the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, Optional, Sequence

import torch

import tools.benchmark
from tools.benchmark.common import TIMER_HELP, TIMERS, load_average, run_metadata
from tools.benchmark.flops import flops_against_method_md
from tools.benchmark.memory import memory_child
from tools.benchmark.peers import PEER_BACKBONES
from tools.benchmark.plots import plot
from tools.benchmark.report import fmt, markdown_report, targets
from tools.benchmark.stats import ratios, scaling_exponents
from tools.benchmark.suites import DEFAULT_SUITES, SUITES, compile_rows, measure_group, suite_groups


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.benchmark",
        description=tools.benchmark.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--suites", nargs="+", default=list(DEFAULT_SUITES))
    parser.add_argument("--size-classes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--backbone-sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--scaling-sizes", nargs="+", type=int, default=[256, 384, 512, 768, 1024])
    parser.add_argument("--component-sizes", nargs="+", type=int, default=[512])
    parser.add_argument("--panoptic-size", nargs=2, type=int, default=None, help="H W")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--timer", choices=sorted(TIMERS), default="wall", help=TIMER_HELP["cpu"])
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory")
    parser.add_argument("--no-flops", action="store_true", help="skip fvcore FLOP counts")
    parser.add_argument("--output-dir", default="docs/benchmarks")
    parser.add_argument("--suffix", default="", help="appended to the output file names")
    parser.add_argument("--quick", action="store_true", help="small inputs, tiny models only")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        return args
    if "all" in args.suites:
        args.suites = list(SUITES)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suites {unknown}; choose from {list(SUITES)} or 'all'")
    bad = [s for s in args.size_classes if s not in PEER_BACKBONES]
    if bad:
        parser.error(f"unknown --size-classes {bad}; choose from {sorted(PEER_BACKBONES)}")
    if args.quick:
        args.size_classes = ["tiny"]
        args.backbone_sizes = [224]
        args.scaling_sizes = [224, 256, 320]
        args.component_sizes = [224]
        args.panoptic_size = args.panoptic_size or [256, 256]
        args.warmup, args.repeats = 0, 1
        args.suffix = args.suffix or "_quick"
    if args.panoptic_size is None:
        args.panoptic_size = [800, 1344] if args.device == "cuda" else [512, 512]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timer == "cpu" and (args.device != "cpu" or torch.get_num_threads() != 1):
        parser.error("--timer cpu is only meaningful on the CPU with --threads 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return {}
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, f"benchmark_{args.device}{args.suffix}")
    result = {
        "meta": {
            **run_metadata(args.device),
            "load_average_1_5_15min": {"start": load_average()},
            "suites": args.suites,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "statistic": "median",
            "timer": TIMER_HELP[args.timer],
            "amp": args.amp,
            "memory": "peak RSS above the state before the step, in a fresh process"
            if args.device == "cpu"
            else "CUDA allocator peak above the memory allocated before the step",
        },
        "rows": [],
        "compile": [],
        "flops_vs_method_md": [],
    }
    flops_cache: Dict[tuple, dict] = {}

    def save() -> None:
        result["meta"]["load_average_1_5_15min"]["end"] = load_average()
        result["ratios"] = ratios(result["rows"])
        result["scaling_exponents"] = scaling_exponents(result["rows"])
        result["targets"] = targets(result)
        with open(stem + ".json", "w") as f:
            json.dump(result, f, indent=2)

    for suite in args.suites:
        if suite == "compile":
            result["compile"] = compile_rows(args)
        else:
            for group in suite_groups(suite, args):
                result["rows"] += measure_group(group, args, flops_cache)
        if suite == "backbones" and not args.no_flops:
            result["flops_vs_method_md"] = flops_against_method_md(args.size_classes)
        save()  # a long run keeps what it measured if it is interrupted
    save()
    report = markdown_report(result)
    with open(stem + ".md", "w") as f:
        f.write(report)
    plots = plot(result, stem)
    print()
    print("ClusterFormer / peer (same run):")
    for q in result["ratios"]:
        print(
            f"  {q['suite']:<10} {q['clusterformer']:<26} / {q['peer']:<34} "
            f"{q['height']}x{q['width']} b{q['batch']} {q['mode']:<9} latency "
            f"{fmt(q['latency_ms'], '.2f', 'x')}, memory {fmt(q['peak_memory_mib'], '.2f', 'x')}"
            f", GMACs {fmt(q['gmacs'], '.2f', 'x')}"
        )
    for t in result["targets"]:
        print("  target: " + t)
    print(f"wrote {stem}.json, {stem}.md" + "".join(f", {p}" for p in plots))
    return result
