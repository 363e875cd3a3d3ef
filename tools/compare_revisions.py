#!/usr/bin/env python
"""Before/after figures of an optimisation: ``tools/benchmark.py`` on two revisions, alternately.

    PYTHONPATH=$PWD python tools/compare_revisions.py 973211c --rounds 3 -- \\
        --suites components panoptic --threads 1 --timer cpu --no-memory --no-flops

The "before" revision is checked out into a temporary git worktree; the benchmark scripts of the
working tree are copied into it (so both sides measure the same things the same way), and so is
the compiled extension when ``clusterformer/csrc`` and ``setup.py`` did not change (otherwise it
is rebuilt there). The two trees then run the benchmark in turn, ``--rounds`` times, each in a
fresh process, so that a change in the machine's load hits both; the table reports, per measured
row, the median over rounds of each side's median latency and the ratio after / before.

Writes ``<output-dir>/revisions_<device><suffix>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK_FILES = ("tools/benchmark.py", "tools/benchmark_common.py", "tools/count_params_flops.py")
ROW_KEY = ("suite", "model", "height", "width", "batch", "mode")


def git(*args: str, cwd: str = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def prepare_worktree(revision: str, path: str) -> None:
    git("worktree", "add", "--detach", path, revision)
    for name in BENCHMARK_FILES:
        shutil.copy(os.path.join(REPO, name), os.path.join(path, name))
    extension_changed = subprocess.run(
        ["git", "diff", "--quiet", revision, "--", "clusterformer/csrc", "setup.py"], cwd=REPO
    ).returncode
    built = glob.glob(os.path.join(REPO, "clusterformer", "_C*.so"))
    if built and not extension_changed:
        for so in built:
            shutil.copy(so, os.path.join(path, "clusterformer"))
    else:
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=path, check=True
        )


def run_benchmark(tree: str, label: str, round_index: int, args: argparse.Namespace) -> dict:
    out_dir = os.path.join(args.work_dir, label)
    suffix = f"_{label}_round{round_index}"
    cmd = [sys.executable, os.path.join(tree, "tools", "benchmark.py"), *args.benchmark_args]
    cmd += ["--output-dir", out_dir, "--suffix", suffix]
    env = {**os.environ, "PYTHONPATH": tree}
    print(f"[{label} round {round_index}] {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    (path,) = glob.glob(os.path.join(out_dir, f"benchmark_*{suffix}.json"))
    with open(path) as f:
        return json.load(f)


def combine(results: List[dict]) -> Dict[Tuple, float]:
    """Median over rounds of each row's median latency."""
    samples: Dict[Tuple, List[float]] = {}
    for result in results:
        for row in result["rows"]:
            samples.setdefault(tuple(row[k] for k in ROW_KEY), []).append(row["latency_ms"])
    return {key: statistics.median(values) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="git revision of the 'before' side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-dir", default=os.path.join(REPO, "docs", "benchmarks"))
    parser.add_argument("--suffix", default="")
    parser.add_argument("--work-dir", default=None, help="keep the per-round results here")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.benchmark_args = argv[split + 1 :]  # after "--": tools/benchmark.py's arguments
    before_rev = git("rev-parse", "--short", args.before)
    after_rev = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    temp = tempfile.mkdtemp(prefix="compare_revisions_")
    args.work_dir = args.work_dir or os.path.join(temp, "results")
    tree = os.path.join(temp, "before")
    try:
        prepare_worktree(args.before, tree)
        runs: Dict[str, List[dict]] = {"before": [], "after": []}
        for i in range(args.rounds):
            runs["before"].append(run_benchmark(tree, "before", i, args))
            runs["after"].append(run_benchmark(REPO, "after", i, args))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO)
    before, after = combine(runs["before"]), combine(runs["after"])
    meta = dict(runs["after"][0]["meta"])
    meta.update(
        {
            "before": before_rev,
            "after": after_rev + (" + uncommitted changes" if dirty else ""),
            "rounds": args.rounds,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        }
    )
    rows = [
        {**dict(zip(ROW_KEY, key)), "before_ms": before[key], "after_ms": after.get(key)}
        for key in before
    ]
    lines = [
        f"# Before / after: {meta['before']} -> {meta['after']}",
        "",
        f"{meta['device']} ({meta['device_name']}, {meta['torch_threads']} threads), torch "
        f"{meta['torch']}, {meta['date']}; {meta['timer']}.",
        f"Command: `{meta['command']}`; per side, the median over {args.rounds} alternating "
        "rounds of the benchmark's median latency.",
        "",
        "| suite | model | input | batch | mode | before (ms) | after (ms) | after / before |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["after_ms"] / r["before_ms"] if r["after_ms"] else None
        r["ratio"] = ratio
        lines.append(
            f"| {r['suite']} | {r['model']} | {r['height']}x{r['width']} | {r['batch']} "
            f"| {r['mode']} | {r['before_ms']:.1f} | "
            + ("n/a | n/a |" if ratio is None else f"{r['after_ms']:.1f} | {ratio:.2f}x |")
        )
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, f"revisions_{meta['device']}{args.suffix}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
