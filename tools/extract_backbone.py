#!/usr/bin/env python
"""Keep the backbone of a trained model as a small weights file that other models start from.

    python tools/extract_backbone.py output/shapes_pretraining/model_final.pth \\
        checkpoints/shapes/clusterformer_nano_shapes_cls.pth [--dtype float16]
    python tools/extract_backbone.py --all --dtype float16 \\
        output/shapes_panoptic_reference/model_final.pth \\
        checkpoints/shapes/clusterformer_nano_shapes_panoptic.pth

``--all`` keeps every model tensor instead (a trained model published for inference, as
``make reference-model`` does); a checkpoint trained with ``MODEL_EMA.ENABLED`` gives its averaged
weights, the ones its evaluation used.

The output is ``{"model": {"backbone.<name>": tensor}, "__meta__": {...}}``, the layout
Detectron2's checkpointer reads through ``MODEL.WEIGHTS``: a segmentation or detection model
loads the backbone and logs its other parameters as missing (they keep their initialisation), as
it does for an ImageNet classifier. Optimiser state, the classification head and every other key
are dropped; float16 halves the file (the values are an initialisation, fine-tuned in float32).
"""

import argparse
import hashlib
import os
import sys
from typing import Dict, Optional, Sequence

import torch

from clusterformer.utils.model_ema import CHECKPOINT_KEY as EMA_KEY
from clusterformer.utils.model_ema import averaged_weights

PREFIX = "backbone."
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backbone_state(checkpoint: dict, source: str) -> Dict[str, torch.Tensor]:
    """The ``backbone.*`` tensors of a checkpoint's ``model`` state dict (or of a bare one)."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"{source}: expected a state dict under 'model', got {type(state)}.")
    kept = {k: v for k, v in state.items() if k.startswith(PREFIX) and torch.is_tensor(v)}
    if not kept:
        prefixes = sorted({k.split(".", 1)[0] for k in state})
        raise ValueError(f"{source} has no '{PREFIX}*' tensors (top-level names: {prefixes[:10]}).")
    return kept


def model_state(checkpoint: dict, source: str) -> Dict[str, torch.Tensor]:
    """Every model tensor of a checkpoint: its averaged weights (``model_ema``) when it has
    them, else its ``model`` state dict (or a bare one)."""
    if EMA_KEY in checkpoint:
        return averaged_weights(checkpoint[EMA_KEY])
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{source}: expected a non-empty state dict under 'model'.")
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def extract(
    source: str, output: str, dtype: str = "float32", whole_model: bool = False
) -> Dict[str, torch.Tensor]:
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    state = model_state(checkpoint, source) if whole_model else backbone_state(checkpoint, source)
    state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    meta = {
        "source": os.path.basename(source),
        "source_sha256": _sha256(source),
        "source_iteration": checkpoint.get("iteration"),
        "dtype": dtype,
        "kept": "model" if whole_model else "backbone",
    }
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    torch.save({"model": state, "__meta__": meta}, output)
    return state


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pth written by train_net.py")
    parser.add_argument("output", help="the weights file to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument(
        "--all",
        action="store_true",
        help="keep every model tensor (the averaged ones of a MODEL_EMA run), not only the backbone",
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        parser.error(f"no checkpoint at {args.checkpoint}")
    state = extract(args.checkpoint, args.output, args.dtype, whole_model=args.all)
    count = sum(v.numel() for v in state.values())
    size = os.path.getsize(args.output) / 2**20
    print(f"wrote {args.output}: {len(state)} tensors, {count / 1e6:.2f}M values, {size:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
