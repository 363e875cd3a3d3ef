#!/usr/bin/env python
"""Before/after figures of an optimisation: two revisions measured alternately.

    # the benchmark's suites, each revision in its own processes
    python -m tools.compare_revisions 973211c --rounds 3 -- \\
        --suites components panoptic --threads 1 --timer cpu --no-memory --no-flops
    # the model core of both revisions in one process
    python -m tools.compare_revisions 973211c --in-process

The "before" revision is checked out into a temporary git worktree, with the compiled extension
copied from the working tree when ``clusterformer/csrc`` and ``setup.py`` did not change
(otherwise rebuilt there).

* Default mode: the benchmark of the working tree (:data:`BENCHMARK_FILES`) replaces the
  revision's (the package ``tools/benchmark/``, or the scripts ``tools/benchmark.py`` and
  ``tools/benchmark_common.py`` of revisions before it), so both sides measure the same things
  the same way; the two trees then run ``python -m tools.benchmark`` in turn,
  ``--rounds`` times, each in a fresh process, so that a change in the machine's load hits both;
  per measured row, the median over rounds of each side's median latency.
* ``--in-process``: the before revision's package is imported under another name next to the
  working tree's, and the ClusterFormer-T backbone (224 and 512, inference and training step)
  and panoptic model (512, inference) of both, with the same weights, are timed alternately
  call by call in one process (no process-to-process variance); the outputs are compared too.
  ``--cases make_run_step`` times a training step of the `make run` model instead (its
  modules, criterion and AdamW without detectron2, as ``tools.benchmark.train_step --core``).

Writes ``<output-dir>/revisions_<device><suffix>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What ``python -m tools.benchmark`` runs of tools/, copied from the working tree into the
# "before" tree; REPLACED_FILES are the benchmark of revisions before the package, removed so
# that nothing there shadows or mixes with it.
BENCHMARK_FILES = ("tools/__init__.py", "tools/benchmark", "tools/count_params_flops.py")
REPLACED_FILES = ("tools/benchmark.py", "tools/benchmark_common.py")
ROW_KEY = ("suite", "model", "height", "width", "batch", "mode")
IN_PROCESS_CASES = ("backbone", "panoptic", "make_run_step")


def git(*args: str, cwd: str = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def install_benchmark(source: str, tree: str) -> None:
    """Replace the benchmark of the checkout ``tree`` (either layout) with ``source``'s."""
    for name in REPLACED_FILES + BENCHMARK_FILES:
        target = os.path.join(tree, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
    for name in BENCHMARK_FILES:
        origin, target = os.path.join(source, name), os.path.join(tree, name)
        if os.path.isdir(origin):
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(origin, target)


def prepare_worktree(revision: str, path: str) -> None:
    git("worktree", "add", "--detach", path, revision)
    install_benchmark(REPO, path)
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
    cmd = [sys.executable, "-m", "tools.benchmark", *args.benchmark_args]
    cmd += ["--output-dir", out_dir, "--suffix", suffix]
    env = {**os.environ, "PYTHONPATH": tree}
    print(f"[{label} round {round_index}] {tree}: {' '.join(cmd[1:])}", flush=True)
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


def measure_in_process(tree: str, temp: str, args: argparse.Namespace) -> Tuple[list, dict]:
    """Rows ``{..., before_ms, after_ms}`` of the model core of both revisions in this process."""
    import torch

    from tools.benchmark.common import median_seconds, run_metadata, time_alternating
    from tools.benchmark.contenders import MainOutputs, image_inputs
    from tools.benchmark.steps import make_step

    alias = os.path.join(temp, "alias")
    shutil.copytree(
        os.path.join(tree, "clusterformer"), os.path.join(alias, "clusterformer_before")
    )
    sys.path.insert(0, alias)  # the before revision's package, as clusterformer_before
    if args.threads:
        torch.set_num_threads(args.threads)
    with detectron2_layer_hidden():
        sides = {
            "before": importlib.import_module("clusterformer_before.modeling.segmenter"),
            "after": importlib.import_module("clusterformer.modeling.segmenter"),
        }
    cases = []
    if "backbone" in args.cases:
        cases += [
            ("ClusterFormer-T backbone", s, mode)
            for s in (224, 512)
            for mode in ("inference", "train")
        ]
    if "panoptic" in args.cases:
        cases.append(("ClusterFormer-T panoptic", 512, "inference"))
    rows = []
    for name, size, mode in cases:
        models = {}
        for side, module in sides.items():
            torch.manual_seed(0)
            if name.endswith("backbone"):
                models[side] = module.build_clusterformer_backbone("tiny")
            else:
                models[side] = module.build_clusterformer_segmenter(133, backbone="tiny")
        models["after"].load_state_dict(models["before"].state_dict())
        inputs = image_inputs(size, size)(1, "cpu")
        with torch.no_grad():
            keys = ("pred_logits", "pred_masks") if name.endswith("panoptic") else None
            outs = {k: MainOutputs(m.eval(), keys)(*inputs) for k, m in models.items()}
        diff = max((a - b).abs().max().item() for a, b in zip(outs["before"], outs["after"]))
        steps = {k: make_step(m, inputs, mode, "cpu", False, True) for k, m in models.items()}
        latency = median_seconds(time_alternating(steps, "cpu", 1, args.repeats, "wall"))
        rows.append(in_process_row(name, size, 1, mode, latency, diff, "max |output diff|"))
    if "make_run_step" in args.cases:
        rows.append(time_make_run_step(args))
    meta = {
        **run_metadata("cpu"),
        "timer": f"wall-clock time, median of {args.repeats} after 1 warm-up, the two revisions alternating call by call",
    }
    return rows, meta


MAKE_RUN_STEP = "make run model (nano, batch 8)"


@contextlib.contextmanager
def detectron2_layer_hidden():
    """Imports the packages' model cores as without detectron2: with it, importing a package
    registers its data sets in Detectron2's catalog, and a second revision's package would
    register them again (an error); the model core does not use the Detectron2 layer."""
    find_spec = importlib.util.find_spec

    def hiding(name, *args, **kwargs):
        return None if name == "detectron2" else find_spec(name, *args, **kwargs)

    importlib.util.find_spec = hiding
    try:
        yield
    finally:
        importlib.util.find_spec = find_spec


def time_make_run_step(args: argparse.Namespace) -> dict:
    """One training step (forward, losses, backward, AdamW) of the `make run` model of both
    revisions (``tools.benchmark.train_step.build_core_model``, the same weights, the same batch of
    rendered scenes); the output difference is that of the total loss of the first step, with
    the same random points on both sides."""
    import numpy as np
    import torch

    from tools.benchmark.common import median_seconds, time_alternating
    from tools.benchmark.train_step import CORE_IMAGE_SIZE, build_core_model, core_scene_batch

    packages = {"before": "clusterformer_before", "after": "clusterformer"}
    torch.manual_seed(0)
    with detectron2_layer_hidden():
        models = {side: build_core_model({}, p).train() for side, p in packages.items()}
    models["after"].load_state_dict(models["before"].state_dict())
    images, targets = core_scene_batch(np.random.default_rng(0), 8)
    images = images.float()

    def make_step(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)

        def step():
            losses = model.criterion.weight_losses(model.criterion(model.predict(images), targets))
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return loss.detach()

        return step

    steps = {side: make_step(model) for side, model in models.items()}
    first = {}
    for side, step in steps.items():
        torch.manual_seed(1)
        first[side] = step()
    diff = (first["before"] - first["after"]).abs().item()
    latency = median_seconds(time_alternating(steps, "cpu", 1, args.repeats, "wall"))
    return in_process_row(
        MAKE_RUN_STEP, CORE_IMAGE_SIZE, 8, "train step", latency, diff, "|first loss diff|"
    )


def in_process_row(
    name: str,
    size: int,
    batch: int,
    mode: str,
    latency: Dict[str, float],
    diff: float,
    diff_label: str,
) -> dict:
    """The report row of one in-process case (seconds in ``latency``), printed as it is made."""
    row = {
        "suite": "in-process",
        "model": name,
        "height": size,
        "width": size,
        "batch": batch,
        "mode": mode,
        "before_ms": latency["before"] * 1e3,
        "after_ms": latency["after"] * 1e3,
        "max_abs_output_diff": diff,
    }
    print(
        f"[in-process] {name} {size} {mode}: before {row['before_ms']:.1f} ms, after "
        f"{row['after_ms']:.1f} ms, {diff_label} {diff:.1e}",
        flush=True,
    )
    return row


def main() -> None:
    from tools.benchmark.common import command_line

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="git revision of the 'before' side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-dir", default=os.path.join(REPO, "docs", "benchmarks"))
    parser.add_argument("--suffix", default="")
    parser.add_argument("--work-dir", default=None, help="keep the per-round results here")
    parser.add_argument("--in-process", action="store_true", help="see the module docstring")
    parser.add_argument("--repeats", type=int, default=7, help="--in-process repeats")
    parser.add_argument("--threads", type=int, default=None, help="--in-process threads")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=IN_PROCESS_CASES,
        default=list(IN_PROCESS_CASES),
        help="--in-process: what to time (default: all)",
    )
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.benchmark_args = argv[split + 1 :]  # after "--": tools.benchmark's arguments
    before_rev = git("rev-parse", "--short", args.before)
    after_rev = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    temp = tempfile.mkdtemp(prefix="compare_revisions_")
    args.work_dir = args.work_dir or os.path.join(temp, "results")
    tree = os.path.join(temp, "before")
    try:
        prepare_worktree(args.before, tree)
        if args.in_process:
            rows, meta = measure_in_process(tree, temp, args)
            how = "one process, the revisions alternating call by call"
        else:
            runs: Dict[str, List[dict]] = {"before": [], "after": []}
            for i in range(args.rounds):
                runs["before"].append(run_benchmark(tree, "before", i, args))
                runs["after"].append(run_benchmark(REPO, "after", i, args))
            before, after = combine(runs["before"]), combine(runs["after"])
            rows = [
                {**dict(zip(ROW_KEY, key)), "before_ms": before[key], "after_ms": after.get(key)}
                for key in before
            ]
            meta = dict(runs["after"][0]["meta"])
            how = (
                f"per side, the median over {args.rounds} alternating rounds of the benchmark's "
                "median latency"
            )
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO)
    meta.update(
        {
            "before": before_rev,
            "after": after_rev + (" + uncommitted changes" if dirty else ""),
            "rounds": None if args.in_process else args.rounds,
            "command": command_line(),
        }
    )
    lines = [
        f"# Before / after: {meta['before']} -> {meta['after']}",
        "",
        f"{meta['device']} ({meta['device_name']}, {meta['torch_threads']} threads), torch "
        f"{meta['torch']}, {meta['date']}; {meta['timer']}.",
        f"Command: `{meta['command']}`; {how}.",
        "",
        "| suite | model | input | batch | mode | before (ms) | after (ms) | after / before "
        + ("| max abs output diff |" if args.in_process else "|"),
        "|---|---|---|---:|---|---:|---:|---:|" + ("---:|" if args.in_process else ""),
    ]
    for r in rows:
        ratio = r["after_ms"] / r["before_ms"] if r["after_ms"] else None
        r["ratio"] = ratio
        lines.append(
            f"| {r['suite']} | {r['model']} | {r['height']}x{r['width']} | {r['batch']} "
            f"| {r['mode']} | {r['before_ms']:.1f} | "
            + ("n/a | n/a |" if ratio is None else f"{r['after_ms']:.1f} | {ratio:.2f}x |")
            + (f" {r['max_abs_output_diff']:.1e} |" if args.in_process else "")
        )
    os.makedirs(args.output_dir, exist_ok=True)
    kind = "revisions_inprocess" if args.in_process else "revisions"
    stem = os.path.join(args.output_dir, f"{kind}_{meta['device']}{args.suffix}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
