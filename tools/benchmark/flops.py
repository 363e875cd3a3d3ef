"""FLOP counts: fvcore's GMACs of one forward at batch 1, with handlers for the ops fvcore does
not count (deformable sampling, ``grid_sample``, fused attention, ``baddbmm``) and the
broadcast-aware matmul of ``tools/count_params_flops.py``."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from clusterformer.modeling.backbone import build_clusterformer_backbone
from tools.benchmark.contenders import MainOutputs, main_output_keys
from tools.count_params_flops import broadcast_matmul_flop_jit

# docs/method.md: analytic GMACs of the released code at 224x224 (7x7 windows, 10x10 = 100 centres).
METHOD_MD_GMACS = {"tiny": 6.8, "small": 11.8}


def _shape(value: Any) -> List[int]:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def deformable_sampling_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Our deformable sampling (``clusterformer::ms_deform_attn``): every output channel of
    every query sums L * P bilinear samples (4 corner MACs) times their attention weight
    (1 MAC)."""
    B, Lq, M, L, P, _ = _shape(inputs[3])
    d = _shape(inputs[0])[-1]
    return B * Lq * M * L * P * d * 5


def grid_sampler_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Bilinear ``grid_sample`` (transformers' deformable attention): 4 corner MACs per output
    element (its attention weighting is an elementwise product fvcore does not count)."""
    return math.prod(_shape(outputs[0])) * 4


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``scaled_dot_product_attention``: ``Q K^T`` and ``A V``."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    v = _shape(inputs[2])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``baddbmm(input, batch1, batch2)``: the batched product (the added input is free)."""
    b, n, k = _shape(inputs[1])
    return b * n * k * _shape(inputs[2])[-1]


def count_gmacs(model: nn.Module, inputs: Tuple[Tensor, ...]) -> Dict[str, Any]:
    """fvcore GMACs of one forward, with the handlers above; the ops it left out are listed."""
    from fvcore.nn import FlopCountAnalysis

    model = MainOutputs(model, main_output_keys(model)).eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle("aten::matmul", broadcast_matmul_flop_jit)
        # The dispatcher operator; the autograd.Function of revisions before it (compare_revisions
        # runs this script on those too).
        analysis.set_op_handle("clusterformer::ms_deform_attn", deformable_sampling_flop_jit)
        analysis.set_op_handle("prim::PythonOp._MSDeformAttnFunction", deformable_sampling_flop_jit)
        analysis.set_op_handle("aten::grid_sampler", grid_sampler_flop_jit)
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        analysis.set_op_handle("aten::baddbmm", baddbmm_flop_jit)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = analysis.total()
        unsupported = dict(analysis.unsupported_ops())
    return {"gmacs": total / 1e9, "uncounted_ops": unsupported}


def flops_against_method_md(size_classes: Sequence[str]) -> List[dict]:
    """GMACs at 224 of our presets, default (2x2 centres) and with the released setting's
    10x10 centres, against docs/method.md's analytic figures of the released code."""
    out = []
    for size_class in size_classes:
        for k in (2, 10):
            model = build_clusterformer_backbone(size_class, centres_per_window=k)
            gmacs = count_gmacs(model, (torch.zeros(1, 3, 224, 224),))["gmacs"]
            ref = METHOD_MD_GMACS[size_class]
            out.append(
                {
                    "model": f"ClusterFormer-{size_class[0].upper()}",
                    "centres_per_window": k * k,
                    "gmacs": gmacs,
                    "method_md_gmacs": ref,
                    "deviation": gmacs / ref - 1,
                }
            )
    return out
