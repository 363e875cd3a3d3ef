#!/usr/bin/env python
"""Convert Mask2Former decoder weights to ClusterFormer's names (or back), without detectron2.

    python tools/convert_mask2former.py model_final_xxxx.pkl checkpoints/m2f_decoders.pth
    python tools/convert_mask2former.py hf-mask2former/model.safetensors m2f_decoders.pth
    python tools/convert_mask2former.py --to-detectron2 output/run/model_final.pth m2f_names.pkl

Reads a Detectron2 Mask2Former checkpoint (``.pkl`` model zoo file or ``.pth``) or a transformers
``Mask2FormerForUniversalSegmentation`` state dict (``pytorch_model.bin`` / ``model.safetensors``)
and writes ``{"model": {"pixel_decoder.*", "transformer_decoder.*"}, "__meta__": {...}}``, which
``MODEL.WEIGHTS`` loads into a model with ``MODEL.CLUSTER_DECODER.CROSS_ATTENTION
masked_attention``; the backbone is not converted (ClusterFormer has its own) and keeps its
initialisation (docs/mask2former_compatibility.md). It prints the config values the weights fix,
as ``KEY VALUE`` pairs to append to a training command. ``MODEL.WEIGHTS``
also reads Mask2Former checkpoints directly (converted when loaded); this tool is for inspecting
a file, or converting it once.

``--to-detectron2`` writes a ClusterFormer checkpoint's decoders under Detectron2 Mask2Former's
names instead (``.pkl``: the model-zoo pickle of numpy arrays; otherwise ``.pth``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Optional, Sequence

import torch

from clusterformer.modeling.mask2former_conversion import (
    FORMATS,
    Mask2FormerConversionError,
    convert_mask2former,
    inferred_config,
    load_state_dict_file,
    to_detectron2_mask2former,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="checkpoint to read (.pkl, .pth, .bin, .safetensors)")
    parser.add_argument("output", help="file to write (.pth; .pkl with --to-detectron2)")
    parser.add_argument(
        "--format",
        choices=("auto",) + FORMATS,
        default="auto",
        help="naming scheme of the input (default: detected from its keys)",
    )
    parser.add_argument(
        "--to-detectron2",
        action="store_true",
        help="the input is a ClusterFormer checkpoint; write its decoders with Mask2Former names",
    )
    parser.add_argument(
        "--non-strict",
        action="store_true",
        help="convert what is known and list the other keys, instead of stopping on them",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read files that need arbitrary unpickling (only for files you trust)",
    )
    return parser.parse_args(argv)


def _save(obj: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".pkl"):
        model = {k: v.detach().cpu().numpy() for k, v in obj["model"].items()}
        with open(path, "wb") as f:
            pickle.dump({**obj, "model": model}, f)
    else:
        torch.save(obj, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        state = load_state_dict_file(args.input, allow_pickle=args.allow_pickle)
        if args.to_detectron2:
            weights = to_detectron2_mask2former(state)
            _save({"model": weights, "__author__": "ClusterFormer"}, args.output)
            print(
                f"Wrote {len(weights)} tensors with Detectron2 Mask2Former names to {args.output}"
            )
            return 0
        conversion = convert_mask2former(
            state,
            None if args.format == "auto" else args.format,
            strict=not args.non_strict,
        )
    except (Mask2FormerConversionError, FileNotFoundError, pickle.UnpicklingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    meta = {
        "source": os.path.abspath(args.input),
        "source_format": conversion.source_format,
        "skipped": conversion.skipped_summary(),
    }
    _save({"model": conversion.state_dict, "__meta__": meta}, args.output)
    print(
        f"Converted {len(conversion.state_dict)} tensors ({conversion.source_format} names) "
        f"to {args.output}"
    )
    if conversion.skipped:
        print(f"Not converted: {conversion.skipped_summary()}")
    if conversion.unmapped:
        print(f"Unknown keys left out ({len(conversion.unmapped)}): {conversion.unmapped}")
    settings = inferred_config(conversion.state_dict)
    settings["MODEL.CLUSTER_DECODER.CROSS_ATTENTION"] = "masked_attention"
    print("Config values these weights need:")
    print("  " + " ".join(f"{k} {v}" for k, v in settings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
