#!/usr/bin/env python
"""Graph breaks of ``torch.compile`` on the model the benchmark's ``compile`` suite compiles.

``torch._dynamo.explain`` on the ClusterFormer-T panoptic model (133 classes, as
``tools/benchmark.py --suites compile``) and the backbone, at one input size, inference: the
number of graphs, of graph breaks, and the breaks grouped by reason and by the model file they
come from. Dynamo only (no inductor code generation), so it takes about a minute per model::

    PYTHONPATH=$PWD python tools/compile_graph_breaks.py --size 512 512 --output /tmp/breaks.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch

from clusterformer.modeling.backbone import build_clusterformer_backbone
from clusterformer.modeling.ops import extension_available
from clusterformer.modeling.segmenter import build_clusterformer_segmenter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_PANOPTIC_CLASSES = 133


def model_frame(stack: Sequence) -> str:
    """``file:line`` of the innermost frame of the stack that is in this repository."""
    for frame in reversed(list(stack)):
        path = os.path.abspath(frame.filename)
        if path.startswith(REPO + os.sep):
            return f"{os.path.relpath(path, REPO)}:{frame.lineno}"
    return "?"


def explain(model: torch.nn.Module, x: torch.Tensor) -> Dict:
    """Graph and break counts of ``model(x)`` under dynamo, breaks grouped by reason and place."""
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch._dynamo.explain(model)(x)
    places = collections.Counter(
        f"{model_frame(r.user_stack)}: {r.reason.splitlines()[0][:160]}" for r in out.break_reasons
    )
    return {
        "graph_count": out.graph_count,
        "graph_break_count": out.graph_break_count,
        "breaks": [{"where_and_why": k, "count": n} for k, n in places.most_common()],
    }


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", nargs=2, type=int, default=[512, 512], help="H W")
    parser.add_argument("--models", nargs="+", default=["panoptic", "backbone"])
    parser.add_argument("--output", help="write the result as JSON here")
    args = parser.parse_args(argv)
    builders = {
        "panoptic": lambda: build_clusterformer_segmenter(COCO_PANOPTIC_CLASSES, backbone="tiny"),
        "backbone": lambda: build_clusterformer_backbone("tiny"),
    }
    result = {
        "command": " ".join(["python", "tools/compile_graph_breaks.py", *sys.argv[1:]]),
        "torch": torch.__version__,
        "extension": extension_available("cpu"),
        "size": args.size,
        "models": {},
    }
    for name in args.models:
        torch.manual_seed(0)
        model = builders[name]().eval()
        row = explain(model, torch.randn(1, 3, *args.size))
        result["models"][name] = row
        print(
            f"{name} {args.size[0]}x{args.size[1]} (torch {torch.__version__}, extension "
            f"{result['extension']}): {row['graph_count']} graphs, "
            f"{row['graph_break_count']} graph breaks",
            flush=True,
        )
        for b in row["breaks"]:
            print(f"  {b['count']} x {b['where_and_why']}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
