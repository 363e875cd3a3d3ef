"""The Markdown report of a run and the issue's targets, each with its measured value."""

from __future__ import annotations

from typing import List, Optional

from tools.benchmark.suites import SUITES

TARGET_PANOPTIC_RATIO = 0.60  # of Mask2Former-Swin-T's latency
TARGET_SCALING_EXPONENT = 1.1
TARGET_FLOPS_DEVIATION = 0.10


def fmt(value: Optional[float], spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(title: str, columns: str, rows: List[List[str]]) -> List[str]:
    """A section: ``## title`` and a table; ``columns`` is ``"name:align | ..."`` with align
    ``l`` (left) or ``r`` (right)."""
    names, aligns = zip(*(c.strip().rsplit(":", 1) for c in columns.split("|")))
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in aligns) + "|"
    body = ["| " + " | ".join(cells) + " |" for cells in rows]
    return [f"## {title}", "", "| " + " | ".join(names) + " |", rule, *body, ""]


def markdown_report(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    lines = [
        f"# Benchmark: {meta['device']} ({meta['device_name']}, {meta['torch_threads']} threads)",
        "",
        f"Revision {meta.get('revision', 'unknown')}; torch {meta['torch']}, Python "
        f"{meta['python']}, {meta['date']}; load average "
        f"{meta['load_average_1_5_15min']['start'][:1]} -> "
        f"{meta['load_average_1_5_15min']['end'][:1]}.",
        f"Command: `{meta['command']}`; median of {meta['repeats']} after {meta['warmup']} "
        f"warm-up, contenders alternating; {meta['timer']}"
        + ("; bf16 autocast" if meta["amp"] else "; float32")
        + ".",
        "",
    ]
    for suite in SUITES:
        mine = [r for r in rows if r["suite"] == suite]
        if mine:
            lines += markdown_table(
                suite,
                "model:l | input:l | batch:r | mode:l | params (M):r | GMACs:r | latency (ms):r "
                "| throughput (img/s):r | peak memory (MiB):r",
                [
                    [
                        r["model"],
                        f"{r['height']}x{r['width']}",
                        str(r["batch"]),
                        r["mode"],
                        f"{r['params_m']:.2f}",
                        fmt(r["gmacs"], ".2f"),
                        f"{r['latency_ms']:.1f}",
                        f"{r['throughput_img_s']:.2f}",
                        fmt(r["peak_memory_mib"], ".0f"),
                    ]
                    for r in mine
                ],
            )
    if result["ratios"]:
        lines += markdown_table(
            "Ratios ClusterFormer / peer (same run; < 1: ClusterFormer cheaper)",
            "suite:l | ClusterFormer:l | peer:l | input:l | batch:r | mode:l | latency:r "
            "| peak memory:r | GMACs:r | params:r",
            [
                [
                    q["suite"],
                    q["clusterformer"],
                    q["peer"],
                    f"{q['height']}x{q['width']}",
                    str(q["batch"]),
                    q["mode"],
                    *(fmt(q[k], ".2f", "x") for k in ("latency_ms", "peak_memory_mib")),
                    *(fmt(q[k], ".2f", "x") for k in ("gmacs", "params_m")),
                ]
                for q in result["ratios"]
            ],
        )
    if result["scaling_exponents"]:
        lines += markdown_table(
            "Cost growth (exponent of cost against the number of pixels)",
            "model:l | latency:r | peak memory:r | GMACs:r",
            [
                [name, *(fmt(e[k], ".3f") for k in ("latency", "peak_memory", "gmacs"))]
                for name, e in result["scaling_exponents"].items()
            ],
        )
    if result["flops_vs_method_md"]:
        lines += markdown_table(
            "GMACs at 224x224 against method.md (analytic, released code, 100 centres)",
            "model:l | centres per window:r | GMACs (ours):r | method.md:r | deviation:r",
            [
                [
                    f["model"],
                    str(f["centres_per_window"]),
                    f"{f['gmacs']:.2f}",
                    f"{f['method_md_gmacs']:.1f}",
                    f"{f['deviation']:+.1%}",
                ]
                for f in result["flops_vs_method_md"]
            ],
        )
    if result["compile"]:
        lines += markdown_table(
            "torch.compile (inductor) against eager, inference",
            "model:l | input:l | eager (ms):r | compiled (ms):r | speed-up:r "
            "| compile time (s):r | max abs diff:r",
            [
                [
                    c["model"],
                    f"{c['height']}x{c['width']}",
                    f"{c['eager_ms']:.1f}",
                    f"{c['compiled_ms']:.1f}",
                    f"{c['speedup']:.2f}x",
                    f"{c['compile_s']:.0f}",
                    f"{c['max_abs_diff']:.1e}",
                ]
                for c in result["compile"]
            ],
        )
    lines += ["## Targets", ""] + [f"* {t}" for t in result["targets"]] + [""]
    return "\n".join(lines)


def targets(result: dict) -> List[str]:
    """The issue's targets, each with the measured value and whether it is met."""
    out = []
    pan = [q for q in result["ratios"] if q["suite"] == "panoptic"]
    for q in pan:
        where = f"panoptic latency / {q['peer']} at {q['height']}x{q['width']}: "
        if not q["peer"].startswith("Mask2Former"):
            # EoMT: where we stand against it, no target.
            memory = fmt(q["peak_memory_mib"], ".2f", "x")
            out.append(where + f"{fmt(q['latency_ms'], '.2f', 'x')} (memory {memory})")
            continue
        ok = q["latency_ms"] is not None and q["latency_ms"] <= TARGET_PANOPTIC_RATIO
        out.append(
            where
            + f"{fmt(q['latency_ms'], '.2f', 'x')} (target <= {TARGET_PANOPTIC_RATIO:.2f}x): "
            + ("met" if ok else "MISSED")
        )
    for name, e in result["scaling_exponents"].items():
        if not name.startswith("ClusterFormer"):
            continue
        for kind in ("latency", "peak_memory"):
            value = e[kind]
            ok = value is not None and value <= TARGET_SCALING_EXPONENT
            out.append(
                f"{name} {kind.replace('_', ' ')} exponent against pixels: {fmt(value, '.3f')} "
                f"(target <= {TARGET_SCALING_EXPONENT}): " + ("met" if ok else "MISSED")
            )
    for f in result["flops_vs_method_md"]:
        ok = abs(f["deviation"]) <= TARGET_FLOPS_DEVIATION
        out.append(
            f"{f['model']} GMACs at 224 with {f['centres_per_window']} centres per window: "
            f"{f['gmacs']:.2f} vs method.md {f['method_md_gmacs']:.1f} ({f['deviation']:+.1%}; "
            f"target within {TARGET_FLOPS_DEVIATION:.0%}): "
            + ("met" if ok else "outside: see docs/backbone_complexity.md")
        )
    return out
