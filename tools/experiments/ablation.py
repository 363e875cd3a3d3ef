"""Run config variants x seeds through ``train_net.py`` and tabulate their evaluation metrics.

The experiment scripts next to this file (``digits_classification.py``,
``shapes_segmentation.py``, ...) declare their variants and call :func:`run_ablation`. Every run
is a plain ``train_net.py`` subprocess writing to ``<out_root>/<variant>/seed<k>``; a run whose
``eval_results.json`` already exists is reused, so an interrupted experiment resumes. The summary
(mean and sample standard deviation over seeds, every seed's value, run times, machine, date,
command) goes to a JSON file and a Markdown table under ``docs/experiments/``. A run of some of
the variants (``--only``) updates their rows and keeps the others' from the existing report
(:func:`merge_rows`), each row with the revision that measured it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from tools.benchmark.common import code_revision

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Variant:
    """One configuration: ``config`` file plus ``opts`` (``KEY VALUE`` overrides).

    ``eval_weights``: evaluate a trained checkpoint instead of training (``train_net.py
    --eval-only``); a path relative to the repository in which ``{seed}`` is the run's seed.
    ``processes``: training processes of the run (``train_net.py --num-gpus``; on the CPU they
    share the machine's cores, as ``make run`` does).
    """

    name: str
    config: str
    opts: List[str] = field(default_factory=list)
    description: str = ""
    eval_weights: str = ""
    # The seeds of this variant when they differ from the experiment's (e.g. one screening seed).
    seeds: Sequence[int] = ()
    processes: int = 1


def experiment_parser(
    doc: str, out_name: str, seeds: Sequence[int] = (0, 1, 2)
) -> argparse.ArgumentParser:
    """The command line every experiment script shares: ``--seeds``, ``--jobs``, ``--out-root``
    (``output/experiments/<out_name>``), ``--only`` and trailing ``KEY VALUE`` overrides."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    parser.add_argument("--out-root", default=os.path.join(REPO, "output", "experiments", out_name))
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    return parser


def selected(variants: Sequence[Variant], only: Sequence[str] | None) -> List[Variant]:
    """``variants`` restricted to the names in ``only`` (all when empty); unknown names raise."""
    unknown = sorted(set(only or ()) - {v.name for v in variants})
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {[v.name for v in variants]}")
    return [v for v in variants if not only or v.name in only]


def run_variant(
    variant: Variant,
    seed: int,
    out_root: str,
    extra_opts: Sequence[str],
    threads: int = 0,
    nice: int = 0,
) -> dict:
    """Train + evaluate one (variant, seed); returns ``{"results": ..., "seconds": ...}``.

    ``threads`` > 0 sets the run's ``OMP_NUM_THREADS`` (runs in parallel must share the cores);
    ``nice`` > 0 runs it under ``nice -n`` (a long experiment beside other work).
    """
    out_dir = os.path.join(out_root, variant.name, f"seed{seed}")
    results_path = os.path.join(out_dir, "eval_results.json")
    if os.path.isfile(results_path):
        with open(results_path) as f:
            results = json.load(f)
        seconds = None
        timing = os.path.join(out_dir, "run_seconds.txt")
        if os.path.isfile(timing):
            with open(timing) as f:
                seconds = float(f.read())
        return {"results": results, "seconds": seconds}
    weights = variant.eval_weights.format(seed=seed)
    if weights and not os.path.isfile(os.path.join(REPO, weights)):
        raise FileNotFoundError(f"{variant.name} seed {seed}: no checkpoint {weights}")
    cmd = [
        *(["nice", "-n", str(nice)] if nice else []),
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        *(["--eval-only"] if weights else []),
        *(["--num-gpus", str(variant.processes)] if variant.processes > 1 else []),
        "--config-file",
        os.path.join(REPO, variant.config),
        *variant.opts,
        *(["MODEL.WEIGHTS", os.path.join(REPO, weights)] if weights else []),
        *extra_opts,
        "SEED",
        str(seed),
        "OUTPUT_DIR",
        out_dir,
    ]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    shown = cmd[cmd.index(sys.executable) + 1 :]
    print(f"[ablation] {variant.name} seed {seed}: {' '.join(shown)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{variant.name} seed {seed} failed ({proc.returncode}):\n{proc.stderr[-5000:]}"
        )
    with open(os.path.join(out_dir, "run_seconds.txt"), "w") as f:
        f.write(f"{seconds:.1f}")
    with open(results_path) as f:
        return {"results": json.load(f), "seconds": seconds}


def _metric(results: dict, task: str, key: str) -> float:
    try:
        return float(results[task][key])
    except KeyError as e:
        raise KeyError(f"metric {task}/{key} missing from results {sorted(results)}") from e


def _fmt(values: List[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def merge_rows(
    new_rows: Sequence[dict],
    all_variants: Sequence[Variant],
    previous: Optional[dict],
    extra_opts: Sequence[str] = (),
) -> List[dict]:
    """The report's rows: ``new_rows`` and, for the variants of ``all_variants`` not among them,
    the rows of the ``previous`` report (its JSON) that were measured with the same config and
    options, in the order of ``all_variants``.

    A kept row takes its description from the variant (text, not a measurement) and keeps its
    ``revision`` (the previous report's when the row has none). A previous row whose config or
    options differ from the variant's today is dropped with a message: its figures would not
    describe the variant of that name any more. So are all previous rows when the previous
    report ran with other ``extra_opts`` (overrides of every run) than ``extra_opts``.
    """
    fresh = {row["variant"]: row for row in new_rows}
    old: Dict[str, dict] = {}
    if previous and list(previous.get("extra_opts", [])) != list(extra_opts):
        print(
            f"[ablation] the previous report ran with other overrides "
            f"{previous.get('extra_opts', [])} (now {list(extra_opts)}); none of its rows is kept",
            flush=True,
        )
    elif previous:
        for row in previous.get("rows", []):
            old[row["variant"]] = {"revision": previous.get("revision", "unknown"), **row}
    rows = []
    for variant in all_variants:
        if variant.name in fresh:
            rows.append(fresh[variant.name])
            continue
        row = old.get(variant.name)
        if row is None:
            continue
        if (
            row["config"] != variant.config
            or list(row["opts"]) != list(variant.opts)
            or row.get("processes", 1) != variant.processes
        ):
            print(
                f"[ablation] {variant.name}: the previous report measured other options; its row "
                "is dropped (run the variant to measure it again)",
                flush=True,
            )
            continue
        rows.append({**row, "description": variant.description})
    return rows


def run_ablation(
    *,
    title: str,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    metrics: Sequence[Tuple[str, str]],
    out_root: str,
    report_name: str,
    extra_opts: Sequence[str] = (),
    notes: str = "",
    jobs: int = 1,
    all_variants: Sequence[Variant] = (),
) -> dict:
    """Run every variant with every seed, then write ``docs/experiments/<report_name>.{json,md}``.

    Args:
        metrics: ``(task, key)`` pairs read from ``eval_results.json``, e.g. ``("panoptic_seg", "PQ")``.
        extra_opts: overrides applied to every run (e.g. a shorter schedule).
        jobs: runs at the same time, each with ``cpu_count // jobs`` threads (run times are then
            those of a shared machine).
        all_variants: the experiment's whole list when ``variants`` is part of it (``--only``):
            the other variants' rows are kept from the existing report (:func:`merge_rows`).
    """
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            (v.name, seed): pool.submit(run_variant, v, seed, out_root, extra_opts, threads)
            for v in variants
            for seed in (v.seeds or seeds)
        }
        done = {key: future.result() for key, future in futures.items()}
    revision = code_revision()
    rows = []
    for variant in variants:
        variant_seeds = list(variant.seeds or seeds)
        runs = {seed: done[(variant.name, seed)] for seed in variant_seeds}
        row = {
            "variant": variant.name,
            "description": variant.description,
            "config": variant.config,
            "opts": variant.opts,
            "processes": variant.processes,
            "seeds": variant_seeds,
            "revision": revision,
            "seconds": [runs[s]["seconds"] for s in variant_seeds],
            "metrics": {},
        }
        for task, key in metrics:
            values = [_metric(runs[s]["results"], task, key) for s in variant_seeds]
            row["metrics"][f"{task}/{key}"] = {
                "per_seed": dict(zip(map(str, variant_seeds), values)),
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
        rows.append(row)
        print(
            f"[ablation] {variant.name}: "
            + ", ".join(
                f"{m} {_fmt(list(v['per_seed'].values()))}" for m, v in row["metrics"].items()
            ),
            flush=True,
        )

    docs = os.path.join(REPO, "docs", "experiments")
    report_path = os.path.join(docs, f"{report_name}.json")
    if all_variants and os.path.isfile(report_path):
        with open(report_path) as f:
            rows = merge_rows(rows, all_variants, json.load(f), extra_opts)
    command = "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    summary = {
        "title": title,
        "date": datetime.date.today().isoformat(),
        "revision": revision,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "command": command,
        "seeds": list(seeds),
        "extra_opts": list(extra_opts),
        "rows": rows,
    }
    os.makedirs(docs, exist_ok=True)
    with open(report_path, "w") as f:
        json.dump(summary, f, indent=2)
    metric_names = [f"{t}/{k}" for t, k in metrics]
    lines = [
        f"# {title}",
        "",
        f"Produced by `{command}` on {summary['date']} at revision {summary['revision']} "
        f"({summary['machine']}).",
        f"Seeds {list(seeds)} unless the row says otherwise; mean ± sample standard deviation "
        "over seeds.",
        "",
        "| variant | seeds | " + " | ".join(metric_names) + " | per-seed | overrides |",
        "|---|---|" + "---|" * (len(metric_names) + 2),
    ]
    for row in rows:
        cells = [_fmt(list(row["metrics"][m]["per_seed"].values())) for m in metric_names]
        per_seed = "; ".join(
            ", ".join(f"{v:.1f}" for v in row["metrics"][m]["per_seed"].values())
            for m in metric_names
        )
        opts = " ".join(row["opts"]) or "(defaults)"
        if row.get("processes", 1) > 1:
            opts = f"`--num-gpus {row['processes']}` {opts}"
        if row["config"] != rows[0]["config"]:
            opts = f"`{row['config']}` {opts}"
        seeds_cell = ", ".join(map(str, row["seeds"]))
        lines.append(
            f"| {row['variant']} | {seeds_cell} | "
            + " | ".join(cells)
            + f" | {per_seed} | {opts} |"
        )
    older = [f"{row['variant']} ({row['revision']})" for row in rows if row["revision"] != revision]
    if older:
        lines += [
            "",
            "Rows kept from earlier runs of this command, at their revisions: "
            + ", ".join(older)
            + ".",
        ]
    if notes:
        lines += ["", notes]
    with open(os.path.join(docs, f"{report_name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary
