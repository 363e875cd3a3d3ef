#!/usr/bin/env python
"""Parameters and multiply-accumulates (GMACs) of the ClusterFormer backbone presets.

Counted with fvcore's ``FlopCountAnalysis`` (one fused multiply-add = one "flop", i.e. MACs, the
convention of Swin/ConvNeXt tables). fvcore counts convolutions, linear layers, matmul/bmm/einsum
and norms (GroupNorm/LayerNorm as elementwise work). The matmul handler is replaced by one that
counts broadcast batch dimensions (fvcore's multiplies the first operand's size only, which
undercounts ``(K, N) @ (B, heads, windows, N, d)``). Not counted (fvcore ignores them, as for
Swin's published figures): softmax, sigmoid, GELU, exp, divisions, additions, normalisation of
vectors for the cosine similarity, argmax/scatter, padding and permutes. They are listed per run.

Usage: python -m tools.count_params_flops [--size 224] [--presets nano tiny small]
           [--centres 2 10] [--iterations 3] [--downsample-kernels 3 2] [--compare-timm]
Runs without detectron2.
"""

import argparse
import itertools
import math
from collections import Counter
from typing import Any, Dict, List

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

from clusterformer.modeling.backbone import (
    ClassificationHead,
    build_clusterformer_backbone,
)


def broadcast_matmul_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of aten::matmul with broadcasting: prod(output shape) * contracted dimension."""
    a, b = (get_shape(v) for v in inputs[:2])
    out = get_shape(outputs[0])
    contracted = a[-1]
    if len(b) >= 2 and b[-2] != contracted:
        raise ValueError(f"matmul shapes {a} x {b} do not contract")
    return math.prod(out) * contracted


def count(model: torch.nn.Module, size: int) -> Dict[str, Any]:
    model.eval()
    image = torch.zeros(1, 3, size, size)
    analysis = FlopCountAnalysis(model, image)
    analysis.set_op_handle("aten::matmul", broadcast_matmul_flop_jit)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    by_module = analysis.by_module()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": analysis.total(),
        "by_op": dict(by_op),
        "mixer_macs": sum(v for k, v in by_module.items() if k.endswith(".mixer")),
        # The window clustering itself: the mixers minus their 1x1 projections.
        "clustering_macs": sum(v for k, v in by_module.items() if k.endswith(".mixer"))
        - sum(v for k, v in by_module.items() if k.endswith((".mixer.qkv", ".mixer.proj"))),
        "unsupported": Counter(analysis.unsupported_ops()),
    }


def head_params(channels: Dict[str, int], pooling: str) -> int:
    return sum(p.numel() for p in ClassificationHead(channels, 1000, pooling=pooling).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--presets", nargs="+", default=["nano", "tiny", "small"])
    parser.add_argument(
        "--centres", "--centers", nargs="+", type=int, default=[2, 10], help="k (k x k centres)"
    )
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument(
        "--downsample-kernels", nargs="+", type=int, default=[3], help="3 (default) and/or 2"
    )
    parser.add_argument("--compare-timm", action="store_true", help="also count timm Swin/ConvNeXt")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    print(f"Input 1x3x{args.size}x{args.size}; T = {args.iterations}; MACs by fvcore (see header).")
    print()
    print(
        "| model | downsampling conv | k x k centres / window | backbone params (M) "
        "| + head last_stage / all_stages (M) | GMACs | mixers (GMACs) "
        "| clustering in mixers (GMACs) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    unsupported = Counter()
    for preset, kernel, k in itertools.product(args.presets, args.downsample_kernels, args.centres):
        model = build_clusterformer_backbone(
            preset, centres_per_window=k, iterations=args.iterations, downsample_kernel_size=kernel
        )
        result = count(model, args.size)
        unsupported.update(result["unsupported"])
        channels = model.out_feature_channels
        last = head_params({"res5": channels["res5"]}, "last_stage")
        every = head_params(channels, "all_stages")
        p = result["params"]
        print(
            f"| ClusterFormer-{preset} | {kernel}x{kernel} | {k}x{k} = {k * k} | {p / 1e6:.2f} | "
            f"{(p + last) / 1e6:.2f} / {(p + every) / 1e6:.2f} | {result['macs'] / 1e9:.2f} | "
            f"{result['mixer_macs'] / 1e9:.2f} | {result['clustering_macs'] / 1e9:.2f} |"
        )
    if args.compare_timm:
        try:
            import timm
        except ImportError:
            print("\n(timm not installed: no Swin/ConvNeXt comparison)")
        else:
            for name in (
                "swin_tiny_patch4_window7_224",
                "swin_small_patch4_window7_224",
                "convnext_tiny",
                "convnext_small",
            ):
                model = timm.create_model(name, pretrained=False, num_classes=1000)
                result = count(model, args.size)
                print(
                    f"| timm {name} (with classifier) | - | - | {result['params'] / 1e6:.2f} | - | "
                    f"{result['macs'] / 1e9:.2f} | - | - |"
                )
    print()
    print(
        "Operators fvcore did not count (calls over all runs): "
        + ", ".join(f"{op} ({n})" for op, n in sorted(unsupported.items()))
    )


if __name__ == "__main__":
    main()
