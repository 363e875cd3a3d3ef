#!/usr/bin/env python
"""Speed, memory, parameters and FLOPs of ClusterFormer against the peers users would pick.

Suites (``--suites``; all but ``compile`` by default, ``all`` for every one):

* ``backbones``: ClusterFormer-T/S against timm's Swin-T/S and ConvNeXt-T/S (random init, all as
  four-stage feature extractors), at 224x224 and 512x512, inference and one training step
  (forward, backward, AdamW step);
* ``panoptic``: the full panoptic model, ClusterFormer-T against Hugging Face transformers'
  ``Mask2FormerForUniversalSegmentation`` with a Swin-T backbone config (random init, 100
  queries, 9 decoder layers, 6 encoder layers, 133 classes) and EoMT
  (``EomtForUniversalSegmentation``, ViT-S and ViT-B, square inputs only), at 512x512 on CPU and
  800x1344 on GPU (1333 padded to a multiple of 32, as Detectron2 pads), inference;
* ``scaling``: backbone latency and peak memory at 256, 384, 512, 768 and 1024 px (inference),
  with the exponent of a least-squares fit of log(cost) against log(pixels);
* ``components``: ClusterFormer's hot spots alone (the backbone's clustering mixer at stages 1
  and 3, the decoder's clustering cross-attention, the whole transformer decoder), forward and
  forward + backward: the before/after figures of optimisations;
* ``compile``: ``torch.compile`` (inductor) against eager for the ClusterFormer-T backbone and
  panoptic model (inference; the first call's compile time is reported apart).

Every group of contenders (same suite, input, batch and mode) is timed alternately, repeat by
repeat, after warm-up (``benchmark_common.time_alternating``); latency is the median, throughput
``batch / latency``. Peak memory is measured in a fresh process per contender on CPU (peak
resident set size above the state before the step) and with the CUDA allocator's peak on GPU.
FLOPs are fvcore's count at batch 1 (multiply-accumulates, "GMACs", the Swin/ConvNeXt
convention; see ``tools/count_params_flops.py``), with the deformable sampling and fused
attention counted by the handlers below.

Writes ``<output-dir>/benchmark_<device><suffix>.json`` and ``.md`` and PNG plots, and prints
every ClusterFormer / peer ratio. Runs without detectron2 (needs timm and transformers)::

    PYTHONPATH=$PWD python tools/benchmark.py                     # CPU (or --device cuda)
    PYTHONPATH=$PWD python tools/benchmark.py --quick --output-dir /tmp/bench   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from benchmark_common import (
    CPU_MEMORY_ENV,
    TIMER_HELP,
    TIMERS,
    load_average,
    median_seconds,
    peak_memory_mib,
    run_metadata,
    time_alternating,
)
from count_params_flops import broadcast_matmul_flop_jit
from torch import Tensor, nn

from clusterformer.modeling.backbone import ClusteringMixer, build_clusterformer_backbone
from clusterformer.modeling.segmenter import build_clusterformer_segmenter
from clusterformer.modeling.transformer_decoder import (
    ClusteringCrossAttention,
    ClusteringTransformerDecoder,
)
from clusterformer.modeling.transformer_decoder.cross_attention import (
    release_empty_restrictions,
)

SUITES = ("backbones", "panoptic", "scaling", "components", "compile")
DEFAULT_SUITES = ("backbones", "panoptic", "scaling", "components")
MODES = ("inference", "train")
COCO_PANOPTIC_CLASSES = 133
# docs/method.md: analytic GMACs of the released code at 224x224 (7x7 windows, 10x10 = 100 centres).
METHOD_MD_GMACS = {"tiny": 6.8, "small": 11.8}
TARGET_PANOPTIC_RATIO = 0.60  # of Mask2Former-Swin-T's latency
TARGET_SCALING_EXPONENT = 1.1
TARGET_FLOPS_DEVIATION = 0.10


# ---- contenders ---------------------------------------------------------------------------
@dataclass
class Contender:
    """A model of a suite: ``build()`` returns the module, ``inputs(batch, device)`` its inputs.

    ``family`` is "clusterformer" or "peer"; ratios compare each ClusterFormer contender with
    the peers of the same ``size_class``.
    """

    name: str
    family: str
    size_class: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, str], Tuple[Tensor, ...]]


class MainOutputs(nn.Module):
    """A model returning only its main prediction tensors (for fvcore's tracer, which needs
    tensors out): ``keys`` of its output dict, or every feature map of a dict/list output."""

    def __init__(self, model: nn.Module, keys: Optional[Sequence[str]] = None):
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        out = self.model(*inputs)
        if self.keys is not None:
            return tuple(out[k] for k in self.keys)
        return tuple(out.values()) if isinstance(out, dict) else tuple(out)


class HFMask2Former(nn.Module):
    """``Mask2FormerForUniversalSegmentation(pixel_values=x)`` as ``x -> output``."""

    def __init__(self, image_size: Tuple[int, int], num_classes: int = COCO_PANOPTIC_CLASSES):
        super().__init__()
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

        swin = SwinConfig(
            image_size=list(image_size),
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        # decoder_layers counts Mask2Former's prediction on the initial queries: 10 -> 9 layers.
        config = Mask2FormerConfig(
            backbone_config=swin,
            num_queries=100,
            decoder_layers=10,
            encoder_layers=6,
            num_labels=num_classes,
        )
        self.model = Mask2FormerForUniversalSegmentation(config)

    def forward(self, pixel_values: Tensor):
        return self.model(pixel_values=pixel_values)


class HFEoMT(nn.Module):
    """``EomtForUniversalSegmentation(pixel_values=x)`` as ``x -> output``: EoMT's COCO panoptic
    setting (patch 16, 4 registers, 200 queries joining for the last 4 blocks, 2 upscale blocks)
    on a ViT-S or ViT-B encoder, random init. EoMT takes square inputs only (its query-mask
    grid is ``image_size / patch_size`` on both sides)."""

    ENCODERS = {
        "ViT-S": {"hidden_size": 384, "num_attention_heads": 6, "num_hidden_layers": 12},
        "ViT-B": {"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12},
    }

    def __init__(self, encoder: str, image_size: int, num_classes: int = COCO_PANOPTIC_CLASSES):
        super().__init__()
        from transformers import EomtConfig, EomtForUniversalSegmentation

        config = EomtConfig(
            image_size=image_size,
            patch_size=16,
            num_queries=200,
            num_blocks=4,
            num_labels=num_classes,
            **self.ENCODERS[encoder],
        )
        self.model = EomtForUniversalSegmentation(config)

    def forward(self, pixel_values: Tensor):
        return self.model(pixel_values=pixel_values)


def image_inputs(height: int, width: int) -> Callable[[int, str], Tuple[Tensor, ...]]:
    def make(batch: int, device: str) -> Tuple[Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(batch, 3, height, width, generator=generator).to(device),)

    return make


def timm_backbone(name: str, height: int, width: int) -> nn.Module:
    import timm

    kwargs = {"img_size": (height, width)} if name.startswith("swin") else {}
    return timm.create_model(name, pretrained=False, features_only=True, **kwargs)


PEER_BACKBONES = {
    "tiny": (("Swin-T", "swin_tiny_patch4_window7_224"), ("ConvNeXt-T", "convnext_tiny")),
    "small": (("Swin-S", "swin_small_patch4_window7_224"), ("ConvNeXt-S", "convnext_small")),
}


def backbone_contenders(
    size_classes: Sequence[str], height: int, width: int, peers: bool = True
) -> List[Contender]:
    inputs = image_inputs(height, width)
    contenders = []
    for size_class in size_classes:
        contenders.append(
            Contender(
                f"ClusterFormer-{size_class[0].upper()}",
                "clusterformer",
                size_class,
                lambda s=size_class: build_clusterformer_backbone(s),
                inputs,
            )
        )
        for label, timm_name in PEER_BACKBONES[size_class] if peers else ():
            contenders.append(
                Contender(
                    label,
                    "peer",
                    size_class,
                    lambda n=timm_name: timm_backbone(n, height, width),
                    inputs,
                )
            )
    return contenders


def panoptic_contenders(height: int, width: int) -> List[Contender]:
    inputs = image_inputs(height, width)
    return [
        Contender(
            "ClusterFormer-T panoptic",
            "clusterformer",
            "tiny",
            lambda: build_clusterformer_segmenter(COCO_PANOPTIC_CLASSES, backbone="tiny"),
            inputs,
        ),
        Contender(
            "Mask2Former-Swin-T (transformers)",
            "peer",
            "tiny",
            lambda: HFMask2Former((height, width)),
            inputs,
        ),
    ] + [
        Contender(
            f"EoMT-{encoder} (transformers)",
            "peer",
            "tiny",
            lambda e=encoder: HFEoMT(e, height),
            inputs,
        )
        # EoMT needs square inputs (it pads to them); at other sizes it is left out.
        for encoder in (HFEoMT.ENCODERS if height == width else ())
    ]


def main_output_keys(model: nn.Module) -> Optional[Sequence[str]]:
    """The prediction tensors of a model's output dict (``None``: all its feature maps)."""
    if isinstance(model, (HFMask2Former, HFEoMT)):
        return ("class_queries_logits", "masks_queries_logits")
    if type(model).__name__ == "ClusterFormerSegmenter":
        return ("pred_logits", "pred_masks")
    if isinstance(model, ClusteringTransformerDecoder):
        return ("pred_logits", "pred_masks")
    return None


class _CrossAttentionQueries(nn.Module):
    """The decoder cross-attention as ``(queries, pixels, query_pos, pixel_pos, allowed) ->
    queries``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.layer(*inputs)[0]


def component_contenders(image_size: int) -> List[Contender]:
    """The hot spots at the shapes they have inside ClusterFormer-T for an ``image_size``
    square input: stage-1 and stage-3 mixers, one decoder cross-attention on the stride-8
    level with a mask restriction, and the 9-layer decoder."""
    s = image_size

    def feature_map(channels: int, stride: int) -> Callable[[int, str], Tuple[Tensor, ...]]:
        def make(batch: int, device: str) -> Tuple[Tensor, ...]:
            g = torch.Generator().manual_seed(0)
            size = math.ceil(s / stride)
            x = torch.randn(batch, channels, size, size, generator=g).to(device)
            # channels_last, as the backbone hands its maps to the mixers.
            return (x.contiguous(memory_format=torch.channels_last),)

        return make

    def cross_attention_inputs(batch: int, device: str) -> Tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        n = math.ceil(s / 8) ** 2
        queries = torch.randn(batch, 100, 256, generator=g)
        pixels = torch.randn(batch, n, 256, generator=g)
        query_pos = torch.randn(batch, 100, 256, generator=g)
        pixel_pos = torch.randn(batch, n, 256, generator=g)
        # A trained decoder's masks cover a fraction of the image: about 30% here.
        allowed = release_empty_restrictions(torch.rand(batch, 100, n, generator=g) < 0.3)
        return tuple(t.to(device) for t in (queries, pixels, query_pos, pixel_pos, allowed))

    def decoder_inputs(batch: int, device: str) -> Tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        levels = [
            torch.randn(batch, 256, math.ceil(s / st), math.ceil(s / st), generator=g)
            for st in (32, 16, 8)
        ]
        mask_features = torch.randn(batch, 256, math.ceil(s / 4), math.ceil(s / 4), generator=g)
        return tuple(t.to(device) for t in (*levels, mask_features))

    class DecoderFromTensors(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = ClusteringTransformerDecoder(256, COCO_PANOPTIC_CLASSES, mask_dim=256)

        def forward(self, *inputs: Tensor) -> Dict[str, Any]:
            return self.decoder(list(inputs[:3]), inputs[3])

    return [
        Contender(
            "backbone mixer, stage 1 (96 ch, 3 heads)",
            "clusterformer",
            "tiny",
            lambda: ClusteringMixer(96, num_heads=3, head_dim=32),
            feature_map(96, 4),
        ),
        Contender(
            "backbone mixer, stage 3 (384 ch, 12 heads)",
            "clusterformer",
            "tiny",
            lambda: ClusteringMixer(384, num_heads=12, head_dim=32),
            feature_map(384, 16),
        ),
        Contender(
            "decoder clustering cross-attention (stride 8, T = 3)",
            "clusterformer",
            "tiny",
            lambda: _CrossAttentionQueries(ClusteringCrossAttention(256, 8, 3)),
            cross_attention_inputs,
        ),
        Contender(
            "transformer decoder (9 layers, 100 queries)",
            "clusterformer",
            "tiny",
            DecoderFromTensors,
            decoder_inputs,
        ),
    ]


# ---- steps --------------------------------------------------------------------------------
def tensors_in(output: Any) -> List[Tensor]:
    """Every floating tensor of a (nested) model output that carries a gradient."""
    if isinstance(output, Tensor):
        return [output] if output.is_floating_point() and output.requires_grad else []
    if isinstance(output, dict):
        return [t for v in output.values() for t in tensors_in(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in tensors_in(v)]
    return []


def scalar_loss(output: Any) -> Tensor:
    """A loss touching every output (sum of means), so that backward reaches every head."""
    return sum(t.float().mean() for t in tensors_in(output))


def autocast(device: str, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def make_step(
    model: nn.Module, inputs: Tuple[Tensor, ...], mode: str, device: str, amp: bool, optimize: bool
) -> Callable[[], None]:
    """``inference``: forward under ``no_grad``; ``train``: forward, backward and, with
    ``optimize``, an AdamW step (models) or none (components: forward + backward)."""
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.no_grad(), autocast(device, amp):
                model(*inputs)

        return infer
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if optimize else None

    def train() -> None:
        for p in params:
            p.grad = None
        with autocast(device, amp):
            loss = scalar_loss(model(*inputs))
        loss.backward()
        if optimizer is not None:
            optimizer.step()

    return train


# ---- FLOPs --------------------------------------------------------------------------------
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


# ---- measuring one group --------------------------------------------------------------------
@dataclass
class Group:
    """Contenders measured together: one suite, one input size, batch and mode."""

    suite: str
    contenders: List[Contender]
    size: Tuple[int, int]
    batch: int
    mode: str
    optimize: bool = True  # train mode: AdamW step after backward


def memory_child_command(group: Group, contender: Contender, args: argparse.Namespace) -> list:
    spec = {
        "suite": group.suite,
        "name": contender.name,
        "size": list(group.size),
        "batch": group.batch,
        "mode": group.mode,
        "optimize": group.optimize,
        "size_classes": args.size_classes,
        "amp": args.amp,
        "threads": torch.get_num_threads(),
    }
    return [sys.executable, os.path.abspath(__file__), "--memory-child", json.dumps(spec)]


def contenders_of(suite: str, size: Tuple[int, int], size_classes: Sequence[str]):
    h, w = size
    if suite == "backbones":
        return backbone_contenders(size_classes, h, w)
    if suite == "scaling":
        return backbone_contenders(["tiny"], h, w)
    if suite == "panoptic":
        return panoptic_contenders(h, w)
    if suite == "components":
        return component_contenders(h)
    raise ValueError(f"no contenders for suite {suite!r}")


def memory_child(spec_json: str) -> None:
    """Build one contender in this fresh process, run one step, print its peak memory."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    size = tuple(spec["size"])
    (contender,) = [
        c
        for c in contenders_of(spec["suite"], size, spec["size_classes"])
        if c.name == spec["name"]
    ]
    model = contender.build()
    inputs = contender.inputs(spec["batch"], "cpu")
    step = make_step(model, inputs, spec["mode"], "cpu", spec["amp"], spec["optimize"])
    peak = peak_memory_mib(step, "cpu")
    print("PEAK_MEMORY_MIB=" + json.dumps(peak))


def measure_memory(group: Group, contender: Contender, model, inputs, args) -> Optional[float]:
    if args.no_memory:
        return None
    if args.device == "cuda":
        step = make_step(model, inputs, group.mode, args.device, args.amp, group.optimize)
        return peak_memory_mib(step, "cuda")
    env = {**os.environ, **CPU_MEMORY_ENV}
    proc = subprocess.run(
        memory_child_command(group, contender, args), capture_output=True, text=True, env=env
    )
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_MEMORY_MIB="):
            return json.loads(line.split("=", 1)[1])
    raise RuntimeError(
        f"memory measurement of {contender.name} ({group.suite}, {group.size}, {group.mode}) "
        f"failed:\n{proc.stderr[-3000:]}"
    )


def measure_group(
    group: Group, args: argparse.Namespace, flops_cache: Dict[tuple, dict]
) -> List[dict]:
    """Time the group's contenders alternately; add parameters, GMACs and peak memory."""
    device = args.device
    torch.manual_seed(0)
    models, steps, rows = {}, {}, []
    for c in group.contenders:
        model = c.build().to(device)
        inputs = c.inputs(group.batch, device)
        models[c.name] = (model, inputs)
        steps[c.name] = make_step(model, inputs, group.mode, device, args.amp, group.optimize)
    samples = time_alternating(steps, device, args.warmup, args.repeats, args.timer)
    latency = median_seconds(samples)
    for c in group.contenders:
        model, inputs = models[c.name]
        key = (group.suite, c.name, group.size)
        if key not in flops_cache and not args.no_flops:
            try:
                flops_cache[key] = count_gmacs(model, c.inputs(1, device))
            except Exception as e:  # fvcore's tracer cannot follow every model
                flops_cache[key] = {"gmacs": None, "error": f"{type(e).__name__}: {e}"[:300]}
        row = {
            "suite": group.suite,
            "model": c.name,
            "family": c.family,
            "size_class": c.size_class,
            "height": group.size[0],
            "width": group.size[1],
            "batch": group.batch,
            "mode": group.mode if group.optimize or group.mode == "inference" else "fwd+bwd",
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "latency_ms": latency[c.name] * 1e3,
            "samples_ms": [t * 1e3 for t in samples[c.name]],
            "throughput_img_s": group.batch / latency[c.name],
            "gmacs": flops_cache.get(key, {}).get("gmacs"),
            "flops_note": flops_cache.get(key, {}).get("error"),
        }
        row["peak_memory_mib"] = measure_memory(group, c, model, inputs, args)
        rows.append(row)
        print(
            f"[{group.suite}] {c.name:<45} {group.size[0]}x{group.size[1]} b{group.batch} "
            f"{row['mode']:<9} {row['latency_ms']:9.1f} ms  "
            + (f"{row['peak_memory_mib']:8.0f} MiB  " if row["peak_memory_mib"] else "")
            + (f"{row['gmacs']:7.2f} GMACs" if row["gmacs"] else ""),
            flush=True,
        )
    del models, steps
    return rows


# ---- suites -------------------------------------------------------------------------------
def suite_groups(suite: str, args: argparse.Namespace) -> List[Group]:
    """The groups a suite measures: (input size, batch, mode) cases, each with the suite's
    contenders (:func:`contenders_of`, which the memory child processes rebuild too)."""
    square = lambda sizes: [(s, s) for s in sizes]  # noqa: E731
    if suite == "backbones":
        cases = [
            (size, b, mode)
            for size in square(args.backbone_sizes)
            for b in args.batch_sizes
            for mode in MODES
        ]
    elif suite == "panoptic":
        cases = [(tuple(args.panoptic_size), 1, "inference")]
    elif suite == "scaling":
        cases = [(size, 1, "inference") for size in square(args.scaling_sizes)]
    elif suite == "components":
        cases = [(size, 1, mode) for size in square(args.component_sizes) for mode in MODES]
    else:
        raise ValueError(suite)
    return [
        Group(
            suite,
            contenders_of(suite, size, args.size_classes),
            size,
            batch,
            mode,
            # Components: forward + backward only, no optimiser step.
            optimize=suite != "components",
        )
        for size, batch, mode in cases
    ]


def fitted_exponent(pixels: Sequence[float], costs: Sequence[float]) -> Optional[float]:
    """Slope of the least-squares line through (log pixels, log cost)."""
    points = [(math.log(p), math.log(c)) for p, c in zip(pixels, costs) if c and c > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def scaling_exponents(rows: List[dict]) -> Dict[str, Dict[str, Optional[float]]]:
    out = {}
    for name in dict.fromkeys(r["model"] for r in rows if r["suite"] == "scaling"):
        mine = [r for r in rows if r["suite"] == "scaling" and r["model"] == name]
        pixels = [r["height"] * r["width"] for r in mine]
        out[name] = {
            "latency": fitted_exponent(pixels, [r["latency_ms"] for r in mine]),
            "peak_memory": fitted_exponent(pixels, [r["peak_memory_mib"] for r in mine]),
            "gmacs": fitted_exponent(pixels, [r["gmacs"] for r in mine]),
        }
    return out


def ratios(rows: List[dict]) -> List[dict]:
    """ClusterFormer / peer for latency, memory and GMACs, within each measured group."""
    out = []
    keyf = lambda r: (r["suite"], r["height"], r["width"], r["batch"], r["mode"])  # noqa: E731
    for r in rows:
        if r["family"] != "clusterformer":
            continue
        for p in rows:
            if p["family"] != "peer" or keyf(p) != keyf(r) or p["size_class"] != r["size_class"]:
                continue
            entry = {
                "suite": r["suite"],
                "clusterformer": r["model"],
                "peer": p["model"],
                "height": r["height"],
                "width": r["width"],
                "batch": r["batch"],
                "mode": r["mode"],
            }
            for k in ("latency_ms", "peak_memory_mib", "gmacs", "params_m"):
                a, b = r.get(k), p.get(k)
                entry[k] = a / b if a and b else None
            out.append(entry)
    return out


def flops_against_method_md(size_classes: Sequence[str]) -> List[dict]:
    """GMACs at 224 of our presets, default (2x2 centres) and with the released setting's
    10x10 centres, against docs/method.md's analytic figures of the released code."""
    out = []
    for size_class in size_classes:
        for k in (2, 10):
            model = build_clusterformer_backbone(size_class, centers_per_window=k)
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


def compile_rows(args: argparse.Namespace) -> List[dict]:
    """Eager against ``torch.compile`` for the ClusterFormer-T backbone and panoptic model."""
    rows = []
    cases = [
        ("ClusterFormer-T backbone", lambda: build_clusterformer_backbone("tiny"), s)
        for s in args.backbone_sizes
    ]
    h, w = args.panoptic_size
    cases.append(
        (
            "ClusterFormer-T panoptic",
            lambda: build_clusterformer_segmenter(COCO_PANOPTIC_CLASSES, backbone="tiny"),
            (h, w),
        )
    )
    for name, build, size in cases:
        size = (size, size) if isinstance(size, int) else size
        torch.manual_seed(0)
        model = build().to(args.device).eval()
        (x,) = image_inputs(*size)(1, args.device)
        compiled = torch.compile(model)
        start = time.perf_counter()
        with torch.no_grad(), autocast(args.device, args.amp):
            compiled(x)  # compiles
        compile_s = time.perf_counter() - start
        with torch.no_grad():
            eager_out = MainOutputs(model, main_output_keys(model))(x)
            compiled_out = MainOutputs(compiled, main_output_keys(model))(x)
        max_diff = max((a - b).abs().max().item() for a, b in zip(eager_out, compiled_out))
        steps = {
            "eager": make_step(model, (x,), "inference", args.device, args.amp, False),
            "compiled": make_step(compiled, (x,), "inference", args.device, args.amp, False),
        }
        latency = median_seconds(
            time_alternating(steps, args.device, args.warmup, args.repeats, args.timer)
        )
        row = {
            "model": name,
            "height": size[0],
            "width": size[1],
            "eager_ms": latency["eager"] * 1e3,
            "compiled_ms": latency["compiled"] * 1e3,
            "speedup": latency["eager"] / latency["compiled"],
            "compile_s": compile_s,
            "max_abs_diff": max_diff,
        }
        print(
            f"[compile] {name} {size[0]}x{size[1]}: eager {row['eager_ms']:.1f} ms, compiled "
            f"{row['compiled_ms']:.1f} ms ({row['speedup']:.2f}x), compile {compile_s:.0f} s, "
            f"max |diff| {max_diff:.1e}",
            flush=True,
        )
        rows.append(row)
    return rows


# ---- report -------------------------------------------------------------------------------
def _fmt(value: Optional[float], spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _markdown_table(title: str, columns: str, rows: List[List[str]]) -> List[str]:
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
            lines += _markdown_table(
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
                        _fmt(r["gmacs"], ".2f"),
                        f"{r['latency_ms']:.1f}",
                        f"{r['throughput_img_s']:.2f}",
                        _fmt(r["peak_memory_mib"], ".0f"),
                    ]
                    for r in mine
                ],
            )
    if result["ratios"]:
        lines += _markdown_table(
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
                    *(_fmt(q[k], ".2f", "x") for k in ("latency_ms", "peak_memory_mib")),
                    *(_fmt(q[k], ".2f", "x") for k in ("gmacs", "params_m")),
                ]
                for q in result["ratios"]
            ],
        )
    if result["scaling_exponents"]:
        lines += _markdown_table(
            "Cost growth (exponent of cost against the number of pixels)",
            "model:l | latency:r | peak memory:r | GMACs:r",
            [
                [name, *(_fmt(e[k], ".3f") for k in ("latency", "peak_memory", "gmacs"))]
                for name, e in result["scaling_exponents"].items()
            ],
        )
    if result["flops_vs_method_md"]:
        lines += _markdown_table(
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
        lines += _markdown_table(
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
            memory = _fmt(q["peak_memory_mib"], ".2f", "x")
            out.append(where + f"{_fmt(q['latency_ms'], '.2f', 'x')} (memory {memory})")
            continue
        ok = q["latency_ms"] is not None and q["latency_ms"] <= TARGET_PANOPTIC_RATIO
        out.append(
            where
            + f"{_fmt(q['latency_ms'], '.2f', 'x')} (target <= {TARGET_PANOPTIC_RATIO:.2f}x): "
            + ("met" if ok else "MISSED")
        )
    for name, e in result["scaling_exponents"].items():
        if not name.startswith("ClusterFormer"):
            continue
        for kind in ("latency", "peak_memory"):
            value = e[kind]
            ok = value is not None and value <= TARGET_SCALING_EXPONENT
            out.append(
                f"{name} {kind.replace('_', ' ')} exponent against pixels: {_fmt(value, '.3f')} "
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


def plot(result: dict, stem: str) -> List[str]:
    """Bar charts of the backbones and panoptic suites, log-log cost growth; returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, written = result["rows"], []
    colours = {}

    def colour(name: str) -> str:
        return colours.setdefault(name, f"C{len(colours)}")

    for suite in ("backbones", "panoptic", "components"):
        mine = [r for r in rows if r["suite"] == suite]
        if not mine:
            continue
        groups = list(dict.fromkeys((r["height"], r["width"], r["batch"], r["mode"]) for r in mine))
        names = list(dict.fromkeys(r["model"] for r in mine))
        fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) * len(names) / 2), 4))
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            values = [
                next(
                    (r["latency_ms"] for r in mine if r["model"] == name and g == _group_key(r)),
                    0,
                )
                for g in groups
            ]
            positions = [i + j * width for i in range(len(groups))]
            ax.bar(positions, values, width, label=name, color=colour(name))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
        ax.set_xticklabels([f"{h}x{w} b{b}\n{m}" for h, w, b, m in groups], fontsize=8)
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"{suite} ({result['meta']['device_name']}, {result['meta']['device']})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = f"{stem}_{suite}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    mine = [r for r in rows if r["suite"] == "scaling"]
    if mine:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name in dict.fromkeys(r["model"] for r in mine):
            pts = [r for r in mine if r["model"] == name]
            mp = [r["height"] * r["width"] / 1e6 for r in pts]
            e = result["scaling_exponents"][name]
            style = {"color": colour(name)}
            label = f"{name} (exponent {_fmt(e['latency'], '.2f')})"
            axes[0].loglog(mp, [r["latency_ms"] for r in pts], "o-", label=label, **style)
            if all(r["peak_memory_mib"] for r in pts):
                label = f"{name} (exponent {_fmt(e['peak_memory'], '.2f')})"
                memory = [r["peak_memory_mib"] for r in pts]
                axes[1].loglog(mp, memory, "o-", label=label, **style)
        axes[0].set_ylabel("median latency (ms)")
        axes[1].set_ylabel("peak memory (MiB)")
        for ax in axes:
            ax.set_xlabel("megapixels")
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle(f"cost growth, inference, batch 1 ({result['meta']['device']})")
        fig.tight_layout()
        path = f"{stem}_scaling.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _group_key(r: dict) -> tuple:
    return (r["height"], r["width"], r["batch"], r["mode"])


# ---- main ---------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
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
            f"{_fmt(q['latency_ms'], '.2f', 'x')}, memory {_fmt(q['peak_memory_mib'], '.2f', 'x')}"
            f", GMACs {_fmt(q['gmacs'], '.2f', 'x')}"
        )
    for t in result["targets"]:
        print("  target: " + t)
    print(f"wrote {stem}.json, {stem}.md" + "".join(f", {p}" for p in plots))
    return result


if __name__ == "__main__":
    main()
