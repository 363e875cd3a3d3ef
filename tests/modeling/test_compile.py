"""``torch.compile`` traces the model: the backbone as one graph (torch >= 2.4), the compiled
deformable-attention operator (``torch.ops.clusterformer.ms_deform_attn``) without a graph break,
forward and backward, static and dynamic shapes, and the segmenter with no graph break caused by
the op (none at all on torch >= 2.4); the compiled modules compute the same values.
``aot_eager`` runs dynamo and AOT autograd without inductor's C++ code generation, which the
benchmark measures instead (docs/benchmarks.md)."""

import importlib
import os
from typing import List

import pytest
import torch

from clusterformer.modeling.backbone import build_clusterformer_backbone
from clusterformer.modeling.ops import MSDeformAttn, ms_deform_attn, ms_deform_attn_pytorch
from clusterformer.modeling.segmenter import build_clusterformer_segmenter

pytest.importorskip("torch._dynamo")
from torch._dynamo.testing import CompileCounterWithBackend

msda = importlib.import_module("clusterformer.modeling.ops.ms_deform_attn")
requires_cpu_kernel = pytest.mark.skipif(
    not msda.extension_available("cpu"),
    reason=f"clusterformer._C is not built ({msda._C_IMPORT_ERROR})",
)
# Graph breaks whose user stack passes through these files are the op's (the wrapper, the module,
# or the pixel decoder's encoder calling them).
OP_FILES = (
    os.path.join("clusterformer", "modeling", "ops", "ms_deform_attn.py"),
    os.path.join("clusterformer", "modeling", "pixel_decoder", "msdeformattn.py"),
)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# torch < 2.4 (the reference environment's 2.3) cannot trace the window geometry's dataclass and
# breaks the graph there; the modern environment and the GPU machines check the single graph.
ONE_GRAPH = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)


def test_backbone_compiles_as_one_graph_forward_and_backward():
    torch.manual_seed(0)
    model = build_clusterformer_backbone("nano")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=ONE_GRAPH)
    x = torch.randn(2, 3, 96, 80)  # padded windows at every stage
    eager, traced = model(x), compiled(x)
    for name in eager:
        torch.testing.assert_close(traced[name], eager[name])
    params = list(model.parameters())
    traced_grads = torch.autograd.grad(sum(v.square().mean() for v in traced.values()), params)
    eager_grads = torch.autograd.grad(sum(v.square().mean() for v in eager.values()), params)
    for traced_grad, eager_grad in zip(traced_grads, eager_grads):
        torch.testing.assert_close(traced_grad, eager_grad)


def op_inputs(Lq: int = 7, seed: int = 0, requires_grad: bool = False):
    """Inputs of ms_deform_attn: 3 levels, 2 images, 2 heads of 4 channels, 2 points."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 3], [2, 1]])
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(2, int(sizes.sum()), 2, 4, generator=g)
    locations = torch.rand(2, Lq, 2, 3, 2, 2, generator=g) * 1.2 - 0.1
    weights = torch.rand(2, Lq, 2, 3, 2, generator=g)
    for t in (value, locations, weights):
        t.requires_grad_(requires_grad)
    return value, shapes, starts, locations, weights


def op_break_reasons(explanation) -> List[str]:
    """The graph-break reasons of a ``torch._dynamo.explain`` result caused by the op."""
    found = []
    for reason in explanation.break_reasons:
        files = [frame.filename for frame in reason.user_stack]
        if any(f.endswith(op_file) for f in files for op_file in OP_FILES):
            found.append(f"{reason.reason} at {files[-1] if files else '?'}")
    return found


@requires_cpu_kernel
def test_operator_compiles_without_graph_breaks_forward_and_backward():
    explanation = torch._dynamo.explain(ms_deform_attn)(*op_inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # The graph calls the operator itself (not the grid_sample reference).
    (graph,) = explanation.graphs
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    # Dynamo records the overload packet (torch.ops.clusterformer.ms_deform_attn) as written.
    ops = [t for t in targets if t.startswith("clusterformer.")]
    assert ops in (["clusterformer.ms_deform_attn"], ["clusterformer.ms_deform_attn.default"])
    assert not any("grid_sample" in t for t in targets), targets
    torch._dynamo.reset()

    compiled = torch.compile(ms_deform_attn, backend="aot_eager", fullgraph=True)
    eager_inputs, compiled_inputs = op_inputs(requires_grad=True), op_inputs(requires_grad=True)
    eager, traced = ms_deform_attn(*eager_inputs), compiled(*compiled_inputs)
    torch.testing.assert_close(traced, eager)
    grad = torch.randn(eager.shape, generator=torch.Generator().manual_seed(1))
    eager.backward(grad)
    traced.backward(grad)
    for i in (0, 3, 4):
        torch.testing.assert_close(compiled_inputs[i].grad, eager_inputs[i].grad)
    torch.testing.assert_close(traced.detach(), ms_deform_attn_pytorch(*op_inputs()))


@requires_cpu_kernel
def test_operator_compiles_once_for_dynamic_shapes():
    """The Meta kernel takes symbolic sizes: one graph serves two query counts."""
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(ms_deform_attn, backend=counter, dynamic=True, fullgraph=True)
    for Lq in (5, 9):
        inputs = op_inputs(Lq=Lq, seed=Lq)
        torch.testing.assert_close(compiled(*inputs), ms_deform_attn_pytorch(*inputs))
    assert counter.frame_count == 1


@requires_cpu_kernel
def test_module_compiles_as_one_graph():
    """MSDeformAttn skips its host-side level check while compiling: no data-dependent break."""
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=3, n_heads=2, n_points=2)
    value, shapes, starts, _, _ = op_inputs()
    query, reference = torch.randn(2, 7, 16), torch.rand(2, 7, 3, 2)
    flat = torch.randn(2, value.shape[1], 16)
    args = (query, reference, flat, shapes, starts)
    explanation = torch._dynamo.explain(module)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), module(*args))


def test_segmenter_compiles_and_matches_eager():
    torch.manual_seed(0)
    model = build_clusterformer_segmenter(
        5,
        backbone="nano",
        pixel_decoder_kwargs={"conv_dim": 32, "mask_dim": 32, "num_layers": 1},
        decoder_kwargs={
            "hidden_dim": 32,
            "num_queries": 4,
            "nheads": 2,
            "dim_feedforward": 32,
            "dec_layers": 3,
        },
    ).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        eager = model(x)
        explanation = torch._dynamo.explain(model)(x)
        torch._dynamo.reset()
        traced = torch.compile(model, backend="aot_eager")(x)
    for key in ("pred_logits", "pred_masks", "pixel_assignment"):
        torch.testing.assert_close(traced[key], eager[key])
    if msda.extension_available("cpu"):
        # With the dispatcher operator nothing of the op breaks the graph (before it, the
        # autograd.Function and the module's host-side level check broke it in every encoder
        # layer). torch 2.3 still breaks in the backbone (see ONE_GRAPH), not in the op.
        assert op_break_reasons(explanation) == []
        if ONE_GRAPH:
            assert explanation.graph_break_count == 0, explanation.break_reasons
