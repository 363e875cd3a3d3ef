"""Multi-scale deformable attention: compiled kernels vs the grid_sample reference, dispatch and
fallback, and the MSDeformAttn module.

Compiled-kernel tests are skipped (with the reason) when ``clusterformer._C`` is not built; CUDA
tests run only where a GPU is present.
"""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import warnings
from typing import List, Sequence, Tuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clusterformer.modeling.ops import MSDeformAttn, ms_deform_attn, ms_deform_attn_pytorch

# The package re-exports the function under the module's name, so fetch the module itself.
msda = importlib.import_module("clusterformer.modeling.ops.ms_deform_attn")

REPO_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
NOT_BUILT = (
    f"clusterformer._C is not built ({msda._C_IMPORT_ERROR}); "
    "run `python setup.py build_ext --inplace`"
)
requires_cpu_kernel = pytest.mark.skipif(not msda.extension_available("cpu"), reason=NOT_BUILT)
if not torch.cuda.is_available():
    CUDA_SKIP = "needs a CUDA device"
elif not msda.extension_available("cuda"):
    CUDA_SKIP = f"clusterformer._C has no CUDA kernels ({msda._C_IMPORT_ERROR or 'built without'})"
else:
    CUDA_SKIP = ""
requires_cuda_kernel = pytest.mark.skipif(bool(CUDA_SKIP), reason=CUDA_SKIP)


def levels(
    shapes: Sequence[Tuple[int, int]], device="cpu"
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(sizes.sum())


def make_inputs(
    shapes: Sequence[Tuple[int, int]] = ((5, 7), (3, 4), (2, 2)),
    N: int = 2,
    M: int = 2,
    D: int = 3,
    Lq: int = 6,
    P: int = 2,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    low: float = -0.15,
    high: float = 1.15,
    seed: int = 0,
):
    """Random inputs; locations are uniform in [low, high]^2, so some fall off the map."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index, S = levels(shapes, device)
    L = len(shapes)
    value = torch.randn(N, S, M, D, generator=g, dtype=dtype)
    locations = low + (high - low) * torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=dtype)
    weights = torch.rand(N, Lq, M, L, P, generator=g, dtype=dtype)
    value, locations, weights = (t.to(device) for t in (value, locations, weights))
    return value, spatial_shapes, level_start_index, locations, weights


def outputs_and_grads(fn, inputs, grad_seed: int = 1) -> List[torch.Tensor]:
    """fn's output and the gradients of <output, G> for a fixed random G w.r.t. the three
    differentiable inputs (value, sampling_locations, attention_weights)."""
    value, spatial_shapes, level_start_index, locations, weights = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    out = fn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    g = torch.Generator().manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return [out.detach(), *grads]


def kernel(*args):
    return ms_deform_attn(*args, use_extension=True)


def assert_parity(
    inputs, rtol: float, atol: float, reference=ms_deform_attn_pytorch, implementation=kernel
):
    """Kernel (or ``implementation``) vs reference: output and the three gradients.

    ``atol`` is relative to each tensor's largest magnitude (at least 1): location gradients
    scale with the level size (d/dx = W * d/dpx), and float32 rounding with them.
    """
    names = ["output", "grad_value", "grad_sampling_locations", "grad_attention_weights"]
    ours = outputs_and_grads(implementation, inputs)
    ref = outputs_and_grads(reference, inputs)
    for name, a, b in zip(names, ours, ref):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(
            a, b, rtol=rtol, atol=atol * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


# ---- compiled CPU kernel ---------------------------------------------------------------------


@requires_cpu_kernel
@pytest.mark.parametrize(
    "shapes, M, D, P",
    [
        (((5, 7), (3, 4), (2, 2)), 2, 3, 2),
        (((4, 3), (1, 5)), 3, 2, 3),
        (((6, 6),), 1, 4, 4),
    ],
)
def test_gradcheck_cpu_kernel(shapes, M, D, P):
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        shapes, N=2, M=M, D=D, Lq=3, P=P
    )

    def fn(v, loc, w):
        return ms_deform_attn(v, spatial_shapes, level_start_index, loc, w, use_extension=True)

    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@requires_cpu_kernel
@pytest.mark.parametrize(
    "shapes, N, M, D, Lq, P",
    [
        (((8, 8), (4, 4), (2, 2)), 2, 8, 32, 20, 4),  # Mask2Former's per-head width
        (((4, 6), (2, 3)), 1, 2, 16, 9, 2),  # the other compile-time channel counts
        (((4, 6), (2, 3)), 1, 2, 64, 9, 2),
        (((5, 7), (3, 4), (2, 2)), 1, 2, 5, 17, 3),  # odd channels: vector remainder loop
        (((3, 11), (7, 2)), 3, 3, 8, 9, 1),  # non-square levels, one point
        (((1, 1), (2, 3)), 2, 1, 1, 5, 2),  # 1x1 level, one channel
    ],
)
def test_cpu_kernel_matches_reference_fp32(shapes, N, M, D, Lq, P):
    inputs = make_inputs(shapes, N=N, M=M, D=D, Lq=Lq, P=P, dtype=torch.float32, seed=3)
    assert_parity(inputs, rtol=1e-5, atol=1e-5)


@requires_cpu_kernel
def test_cpu_kernel_matches_reference_fp64_and_many_threads():
    """More query blocks than (batch, head) pairs exercises the per-block grad_value copies."""
    inputs = make_inputs(((6, 5), (3, 3)), N=1, M=2, D=4, Lq=40, P=3, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        assert_parity(inputs, rtol=1e-10, atol=1e-10)
    finally:
        torch.set_num_threads(threads)


def border_locations(W: int) -> torch.Tensor:
    """Coordinates at and around the edges and pixel centres of a level W pixels wide."""
    exact = [0.0, 1.0, 0.5 / W, (W - 0.5) / W, 1.5 / W]  # edges, first / last / second centre
    exact += [-0.5 / W, 1.0 + 0.5 / W]  # exactly one pixel out: only a zero-weight corner is in
    outside = [-1e-3, 1.0 + 1e-3, -0.5 / W - 1e-3, 1.0 + 0.5 / W + 1e-3, -3.0, 7.0]
    return torch.tensor(exact + outside, dtype=torch.float64)


@requires_cpu_kernel
def test_cpu_kernel_matches_reference_on_borders():
    """Locations exactly on the borders, on pixel centres and just outside the map.

    Power-of-two sizes make every coordinate exact in binary, so both implementations land on
    the same side of each pixel boundary and even the one-sided location gradients must agree.
    """
    shapes = ((8, 4), (2, 16))
    N, M, D, P = 1, 2, 3, 1
    spatial_shapes, level_start_index, S = levels(shapes)
    xs = border_locations(4)
    ys = border_locations(8)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)  # (Lq, 2)
    Lq = grid.shape[0]
    locations = grid.view(1, Lq, 1, 1, 1, 2).expand(N, Lq, M, len(shapes), P, 2).clone()
    g = torch.Generator().manual_seed(0)
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64)
    weights = torch.rand(N, Lq, M, len(shapes), P, generator=g, dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        inputs = (value.to(dtype), spatial_shapes, level_start_index, locations.to(dtype))
        assert_parity((*inputs, weights.to(dtype)), rtol=tol, atol=tol)
    # Far outside every level, nothing is read and nothing flows back.
    out, grad_value, grad_loc, grad_w = outputs_and_grads(
        kernel, (value, spatial_shapes, level_start_index, torch.full_like(locations, 5.0), weights)
    )
    assert out.abs().max() == 0 and grad_value.abs().max() == 0
    assert grad_loc.abs().max() == 0 and grad_w.abs().max() == 0


@requires_cpu_kernel
def test_cpu_kernel_non_contiguous_inputs():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(dtype=torch.float32)
    # Same values, transposed memory layouts.
    value_nc = value.transpose(0, 1).contiguous().transpose(0, 1)
    locations_nc = locations.permute(5, 0, 1, 2, 3, 4).contiguous().permute(1, 2, 3, 4, 5, 0)
    assert not value_nc.is_contiguous() and not locations_nc.is_contiguous()
    expected = ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, locations, weights)
    got = msda._C.ms_deform_attn_forward(
        value_nc, spatial_shapes.int(), level_start_index, locations_nc, weights
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@requires_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_extension", [True, False])
def test_low_precision_on_cpu_is_computed_in_fp32(dtype, use_extension):
    inputs = make_inputs(dtype=torch.float32, D=8)
    low = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    out = ms_deform_attn(*low, use_extension=use_extension)
    assert out.dtype == dtype
    expected = ms_deform_attn_pytorch(*[t.float() if t.is_floating_point() else t for t in low])
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=2e-2)
    leaves = [low[0].requires_grad_(), low[3].requires_grad_(), low[4].requires_grad_()]
    ms_deform_attn(*low, use_extension=use_extension).sum().backward()
    assert all(t.grad is not None and t.grad.dtype == dtype for t in leaves)


@requires_cpu_kernel
def test_mixed_dtypes_are_promoted():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(dtype=torch.float32)
    out = ms_deform_attn(
        value, spatial_shapes, level_start_index, locations.double(), weights, use_extension=True
    )
    assert out.dtype == torch.float64
    expected = ms_deform_attn_pytorch(
        value.double(), spatial_shapes, level_start_index, locations.double(), weights.double()
    )
    torch.testing.assert_close(out, expected)


@requires_cpu_kernel
def test_kernel_errors_name_the_argument():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(dtype=torch.float32)
    C = msda._C
    with pytest.raises(RuntimeError, match="sampling_locations has dtype Double"):
        C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, locations.double(), weights
        )
    with pytest.raises(RuntimeError, match="attention_weights must be"):
        C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, locations, weights[..., :1]
        )
    with pytest.raises(RuntimeError, match="sampling_locations is on meta but value is on cpu"):
        C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, locations.to("meta"), weights
        )
    shifted = level_start_index + torch.tensor([0, 20, 0])
    with pytest.raises(
        RuntimeError, match=r"level 1 \(spatial_shapes \(3, 4\), level_start_index 55\)"
    ):
        C.ms_deform_attn_forward(value, spatial_shapes, shifted, locations, weights)
    with pytest.raises(RuntimeError, match="CPU kernel supports float32 and float64"):
        C.ms_deform_attn_forward(
            value.half(), spatial_shapes, level_start_index, locations.half(), weights.half()
        )
    out = C.ms_deform_attn_forward(value, spatial_shapes, level_start_index, locations, weights)
    with pytest.raises(RuntimeError, match="grad_output must be"):
        C.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, locations, weights, out[:, :1]
        )


# ---- the dispatcher operator -----------------------------------------------------------------


def operator(*args):
    """torch.ops.clusterformer.ms_deform_attn itself, without the Python wrapper's casts."""
    return torch.ops.clusterformer.ms_deform_attn(*args)


class _Attention(torch.nn.Module):
    """ms_deform_attn as a module of its five inputs, for the tracers."""

    def forward(self, value, spatial_shapes, level_start_index, locations, weights):
        return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)


def clusterformer_calls(graph_targets) -> List[str]:
    return [str(t) for t in graph_targets if str(t).startswith("clusterformer")]


@requires_cpu_kernel
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_operator_matches_reference(dtype, tol):
    """The registered operator (forward and its Autograd kernel's backward) against grid_sample."""
    inputs = make_inputs(((5, 7), (3, 4), (2, 2)), N=2, M=2, D=4, Lq=9, P=3, dtype=dtype, seed=7)
    assert_parity(inputs, rtol=tol, atol=tol, implementation=operator)


@requires_cpu_kernel
def test_operator_gradcheck_fp64():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        ((3, 4), (2, 2)), N=1, M=2, D=2, Lq=3, P=2, seed=11
    )

    def fn(v, loc, w):
        return operator(v, spatial_shapes, level_start_index, loc, w)

    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@requires_cpu_kernel
def test_operator_has_first_derivatives_only():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs()
    value.requires_grad_()
    locations.requires_grad_()
    out = operator(value, spatial_shapes, level_start_index, locations, weights)
    (grad_value,) = torch.autograd.grad(out.square().sum(), value, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        grad_value.sum().backward()


@requires_cpu_kernel
def test_operator_meta_and_fake_kernels_give_the_shapes():
    inputs = make_inputs(N=2, M=2, D=3, Lq=6, P=2, dtype=torch.float32)
    real = operator(*inputs)
    meta = [t.to("meta") for t in inputs]
    out = operator(*meta)
    assert out.device.type == "meta" and out.dtype == torch.float32
    assert out.shape == real.shape == (2, 6, 6) and out.is_contiguous()
    grads = torch.ops.clusterformer.ms_deform_attn_backward(*meta, torch.empty_like(out))
    for grad, source in zip(grads, (meta[0], meta[3], meta[4])):
        assert grad.shape == source.shape and grad.dtype == source.dtype and grad.is_contiguous()
    # The Meta kernel checks what it can without data, with the device kernels' messages.
    with pytest.raises(RuntimeError, match="attention_weights must be"):
        operator(*meta[:4], meta[4][..., :1])
    with pytest.raises(RuntimeError, match="grad_output must be"):
        torch.ops.clusterformer.ms_deform_attn_backward(*meta, out[:, :1])

    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in inputs]
        out = operator(*fake)
    assert isinstance(out, FakeTensor)
    assert out.shape == real.shape and out.dtype == real.dtype and out.device == real.device


@requires_cpu_kernel
@pytest.mark.parametrize("name", ["ms_deform_attn", "ms_deform_attn_backward"])
def test_operator_registration(name):
    qualname = f"clusterformer::{name}"
    keys = ["CPU", "Meta", "Autograd"] + (["CUDA"] if msda._C.with_cuda else [])
    for key in keys:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key), key
    # Nothing composite: tracers keep the op as one node instead of decomposing it.
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CompositeImplicitAutograd")
    op = getattr(torch.ops.clusterformer, name).default
    assert torch.Tag.pt2_compliant_tag in op.tags
    assert not op._schema.is_mutable


@requires_cpu_kernel
@pytest.mark.skipif(
    not hasattr(torch.library, "opcheck"),
    reason="torch.library.opcheck needs torch >= 2.4 (torch 2.3's internal one needs expecttest)",
)
def test_operator_passes_opcheck():
    """torch.library's registration checks: schema, autograd at the Autograd key, FakeTensor
    against the real kernel, and AOTAutograd (static and dynamic shapes, with gradients)."""
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        ((3, 4), (2, 2)), N=1, M=2, D=2, Lq=3, P=2
    )
    args = (
        value.requires_grad_(),
        spatial_shapes,
        level_start_index,
        locations.requires_grad_(),
        weights.requires_grad_(),
    )
    torch.library.opcheck(torch.ops.clusterformer.ms_deform_attn.default, args)


@requires_cpu_kernel
def test_jit_trace_records_one_operator(fresh_warnings):
    inputs = make_inputs(dtype=torch.float32)
    # The shape checks warn (TracerWarning: sizes turned into Python booleans); the trace is
    # taken at fixed sizes anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_Attention(), inputs)
    kinds = [node.kind() for node in traced.graph.nodes()]
    assert kinds.count("clusterformer::ms_deform_attn") == 1, kinds
    assert not any("grid_sampler" in k for k in kinds), kinds
    other = make_inputs(dtype=torch.float32, Lq=11, seed=4)
    torch.testing.assert_close(traced(*other), ms_deform_attn_pytorch(*other))
    # The module is savable; it loads wherever clusterformer._C is imported.
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(*other), traced(*other))


@requires_cpu_kernel
def test_jit_trace_of_the_module_records_one_operator(fresh_warnings):
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    args = module_inputs(module, ((6, 5), (3, 2)), N=2, Lq=7)
    # The shape checks warn (TracerWarning: sizes turned into Python booleans); the trace is
    # taken at fixed sizes anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, args)
    kinds = [node.kind() for node in traced.inlined_graph.nodes()]
    assert kinds.count("clusterformer::ms_deform_attn") == 1, kinds
    torch.testing.assert_close(traced(*args), module(*args))


@requires_cpu_kernel
def test_torch_export_graph_holds_one_operator(fresh_warnings):
    inputs = make_inputs(dtype=torch.float32)
    exported = torch.export.export(_Attention(), inputs)
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.clusterformer.ms_deform_attn.default) == 1, targets
    assert clusterformer_calls(targets) == ["clusterformer.ms_deform_attn.default"], targets
    assert torch.ops.aten.grid_sampler_2d.default not in targets
    torch.testing.assert_close(exported.module()(*inputs), ms_deform_attn_pytorch(*inputs))


@requires_cpu_kernel
def test_torch_export_of_the_module_holds_one_operator(fresh_warnings):
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2).eval()
    args = module_inputs(module, ((6, 5), (3, 2)), N=2, Lq=7)
    exported = torch.export.export(module, args)
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert clusterformer_calls(targets) == ["clusterformer.ms_deform_attn.default"], targets
    torch.testing.assert_close(exported.module()(*args), module(*args))


# ---- dispatch and fallback -------------------------------------------------------------------


class _OpRecorder(TorchDispatchMode):
    """Records the clusterformer operators that reach the dispatcher (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.calls: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "clusterformer":
            self.calls.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(msda, "_warned", set())
    monkeypatch.delenv(msda.DISABLE_EXTENSION_ENV, raising=False)


@requires_cpu_kernel
def test_default_dispatch_uses_the_kernel(fresh_warnings):
    value, spatial_shapes, level_start_index, locations, weights = make_inputs()
    value.requires_grad_()
    with warnings.catch_warnings(), _OpRecorder() as recorder:
        warnings.simplefilter("error")
        ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights
        ).sum().backward()
    assert recorder.calls == [
        "clusterformer::ms_deform_attn",
        "clusterformer::ms_deform_attn_backward",
    ]


@pytest.mark.parametrize("how", ["env", "argument"])
def test_reference_can_be_forced(monkeypatch, fresh_warnings, how):
    inputs = make_inputs()
    kwargs = {}
    if how == "env":
        monkeypatch.setenv(msda.DISABLE_EXTENSION_ENV, "1")
    else:
        kwargs["use_extension"] = False
    with warnings.catch_warnings(), _OpRecorder() as recorder:
        warnings.simplefilter("error")  # forcing the reference is deliberate: no warning
        out = ms_deform_attn(*inputs, **kwargs)
    assert recorder.calls == []
    torch.testing.assert_close(out, ms_deform_attn_pytorch(*inputs))


def test_missing_extension_falls_back_and_warns_once(monkeypatch, fresh_warnings):
    monkeypatch.setattr(msda, "_C", None)
    monkeypatch.setattr(msda, "_C_IMPORT_ERROR", "ImportError: simulated")
    inputs = make_inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ms_deform_attn(*inputs)
        second = ms_deform_attn(*inputs)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "clusterformer._C could not be imported (ImportError: simulated)" in messages[0]
    expected = ms_deform_attn_pytorch(*inputs)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    assert not msda.extension_available("cpu")
    with pytest.raises(RuntimeError, match="use_extension=True but clusterformer._C could not"):
        ms_deform_attn(*inputs, use_extension=True)


def test_module_matches_without_extension(monkeypatch, fresh_warnings):
    """MSDeformAttn gives the same result (and gradients) with and without the extension."""
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2).double()
    with torch.no_grad():  # non-trivial offsets and weights
        module.sampling_offsets.weight.normal_(0, 0.3)
        module.attention_weights.weight.normal_(0, 0.3)
    args = module_inputs(module, ((6, 5), (3, 2)), N=2, Lq=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # where the extension is not built this warns already
        out_default = module(*args)
    grads_default = torch.autograd.grad(out_default.sum(), list(module.parameters()))
    monkeypatch.setattr(msda, "_C", None)
    monkeypatch.setattr(msda, "_C_IMPORT_ERROR", "ImportError: simulated")
    monkeypatch.setattr(msda, "_warned", set())
    with pytest.warns(RuntimeWarning, match="falls back to the slower pure-PyTorch reference"):
        out_fallback = module(*args)
    grads_fallback = torch.autograd.grad(out_fallback.sum(), list(module.parameters()))
    torch.testing.assert_close(out_default, out_fallback)
    for a, b in zip(grads_default, grads_fallback):
        torch.testing.assert_close(a, b)


def test_module_imports_and_runs_when_the_extension_cannot_load():
    """A fresh interpreter where `from clusterformer import _C` fails still imports the ops."""
    code = (
        "import sys, warnings, torch\n"
        "sys.modules['clusterformer._C'] = None  # makes the import raise ImportError\n"
        "from clusterformer.modeling.ops import MSDeformAttn\n"
        "m = MSDeformAttn(8, n_levels=1, n_heads=2, n_points=1)\n"
        "shapes = torch.tensor([[2, 3]]); starts = torch.tensor([0])\n"
        "q, ref, x = torch.rand(1, 4, 8), torch.rand(1, 4, 1, 2), torch.rand(1, 6, 8)\n"
        "args = (q, ref, x, shapes, starts)"
        "\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out = m(*args)\n"
        "    m(*args)\n"
        "assert out.shape == (1, 4, 8)\n"
        "print(len(w), w[0].message)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(msda.DISABLE_EXTENSION_ENV, None)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 clusterformer._C could not be imported"), result.stdout


def test_a_build_without_the_operator_counts_as_not_built():
    """An extension built before the dispatcher operator (pybind functions only) is not used."""
    code = (
        "import sys, types, warnings, torch\n"
        "stale = types.ModuleType('clusterformer._C')  # imports, registers no operator\n"
        "stale.with_cuda = False\n"
        "sys.modules['clusterformer._C'] = stale\n"
        "import importlib\n"
        "msda = importlib.import_module('clusterformer.modeling.ops.ms_deform_attn')\n"
        "assert msda._C is None and not msda.extension_available('cpu')\n"
        "print(msda._C_IMPORT_ERROR)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "predates the dispatcher operator" in result.stdout, result.stdout


def test_input_errors_name_the_argument():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs()
    with pytest.raises(ValueError, match=r"value must be \(N, S, M, D\)"):
        ms_deform_attn(value[0], spatial_shapes, level_start_index, locations, weights)
    with pytest.raises(ValueError, match="sampling_locations must be"):
        ms_deform_attn(value, spatial_shapes, level_start_index, locations[:, :, :, :1], weights)
    with pytest.raises(ValueError, match="attention_weights must be"):
        ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights[:, :2])
    with pytest.raises(ValueError, match="level_start_index must be"):
        ms_deform_attn(value, spatial_shapes, level_start_index[:2], locations, weights)
    with pytest.raises(TypeError, match="spatial_shapes must be an integer tensor"):
        ms_deform_attn(value, spatial_shapes.double(), level_start_index, locations, weights)
    with pytest.raises(TypeError, match="value must be a floating tensor"):
        ms_deform_attn(value.long(), spatial_shapes, level_start_index, locations, weights)
    with pytest.raises(ValueError, match="attention_weights is on meta but value is on cpu"):
        ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights.to("meta"))
    with pytest.raises(ValueError, match="value has 40 tokens but spatial_shapes"):
        ms_deform_attn_pytorch(value[:, :40], spatial_shapes, level_start_index, locations, weights)


# ---- CUDA -------------------------------------------------------------------------------------


@requires_cuda_kernel
@pytest.mark.cuda
def test_cuda_gradcheck():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        ((5, 7), (3, 4), (2, 2)), N=2, M=2, D=3, Lq=3, P=2, device="cuda"
    )

    def fn(v, loc, w):
        return ms_deform_attn(v, spatial_shapes, level_start_index, loc, w, use_extension=True)

    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    # grad_value is accumulated with atomics: repeated backward passes may differ in the last bit.
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, nondet_tol=1e-12)


@requires_cuda_kernel
@pytest.mark.cuda
@pytest.mark.parametrize("D", [32, 5, 48])  # a full warp, a partial group, two channel passes
def test_cuda_kernel_matches_reference_fp32(D):
    inputs = make_inputs(
        ((8, 8), (4, 6), (2, 2)), N=2, M=4, D=D, Lq=33, P=4, dtype=torch.float32, device="cuda"
    )
    assert_parity(inputs, rtol=1e-5, atol=1e-5)


@requires_cuda_kernel
@pytest.mark.cuda
def test_cuda_kernel_matches_cpu_kernel_on_borders():
    shapes = ((8, 4), (2, 16))
    spatial_shapes, level_start_index, S = levels(shapes)
    xs, ys = border_locations(4), border_locations(8)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    Lq = grid.shape[0]
    locations = grid.view(1, Lq, 1, 1, 1, 2).expand(1, Lq, 2, 2, 1, 2).contiguous()
    value = torch.randn(1, S, 2, 3, dtype=torch.float64)
    weights = torch.rand(1, Lq, 2, 2, 1, dtype=torch.float64)
    cpu = outputs_and_grads(kernel, (value, spatial_shapes, level_start_index, locations, weights))
    cuda_inputs = [t.cuda() for t in (value, spatial_shapes, level_start_index, locations, weights)]
    gpu = outputs_and_grads(kernel, cuda_inputs)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=1e-12)


@requires_cuda_kernel
@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_cuda_kernel_low_precision(dtype, tol):
    inputs = make_inputs(
        ((8, 8), (4, 4)),
        N=2,
        M=8,
        D=32,
        Lq=40,
        P=4,
        dtype=torch.float32,
        device="cuda",
        low=0.0,
        high=1.0,
    )
    low = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    ours = outputs_and_grads(kernel, low)
    # The fp32 reference evaluated at the same (rounded) inputs.
    ref = outputs_and_grads(
        ms_deform_attn_pytorch, [t.float() if t.is_floating_point() else t for t in low]
    )
    for a, b in zip(ours, ref):
        assert a.dtype == dtype
        scale = b.abs().max().clamp_min(1.0)
        assert (a.float() - b).abs().max() <= tol * scale


# ---- the MSDeformAttn module ------------------------------------------------------------------


def module_inputs(module: MSDeformAttn, shapes, N: int, Lq: int, box: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dtype = module.value_proj.weight.dtype
    spatial_shapes, level_start_index, S = levels(shapes)
    query = torch.randn(N, Lq, module.d_model, generator=g, dtype=dtype)
    reference = torch.rand(N, Lq, module.n_levels, 4 if box else 2, generator=g, dtype=dtype)
    if box:
        reference[..., 2:] = reference[..., 2:] * 0.5 + 0.1
    flat = torch.randn(N, S, module.d_model, generator=g, dtype=dtype)
    return query, reference, flat, spatial_shapes, level_start_index


@pytest.mark.parametrize("box", [False, True])
def test_module_sampling_locations(monkeypatch, box):
    """Offsets are in level pixels for points and in fractions of half the box for boxes."""
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    shapes = ((6, 5), (3, 2))
    query, reference, flat, spatial_shapes, level_start_index = module_inputs(
        module, shapes, N=2, Lq=4, box=box
    )
    captured = {}

    def spy(value, shapes_, starts, locations, weights):
        captured.update(value=value, locations=locations, weights=weights)
        return ms_deform_attn(value, shapes_, starts, locations, weights)

    monkeypatch.setattr(msda, "ms_deform_attn", spy)
    out = module(query, reference, flat, spatial_shapes, level_start_index)
    assert out.shape == (2, 4, 16)
    offsets = module.sampling_offsets(query).view(2, 4, 4, 2, 3, 2)
    if box:
        expected = (
            reference[:, :, None, :, None, :2]
            + offsets / 3 * reference[:, :, None, :, None, 2:] * 0.5
        )
    else:
        wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
        expected = reference[:, :, None, :, None, :] + offsets / wh[None, None, None, :, None, :]
    torch.testing.assert_close(captured["locations"], expected)
    torch.testing.assert_close(captured["weights"].sum((-1, -2)), torch.ones(2, 4, 4))
    # At initialisation head h's points fan out along its own direction, k pixels for point k.
    if not box:
        head0 = (captured["locations"] - reference[:, :, None, :, None, :])[:, :, 0]
        torch.testing.assert_close(
            head0[..., 0] * wh[:, 0].view(1, 1, 2, 1),
            torch.tensor([1.0, 2.0, 3.0]).expand(2, 4, 2, 3),
        )


def test_module_reads_the_sampled_pixels():
    """With identity projections, uniform weights and zero offsets, the output at a query whose
    reference point is a pixel centre of every level is the mean of those pixels' features."""
    module = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2).double()
    with torch.no_grad():
        module.sampling_offsets.bias.zero_()
        for proj in (module.value_proj, module.output_proj):
            proj.weight.copy_(torch.eye(8))
            proj.bias.zero_()
    shapes = ((4, 4), (2, 2))
    spatial_shapes, level_start_index, S = levels(shapes)
    flat = torch.randn(1, S, 8, dtype=torch.float64)
    # Level 0 (4x4): (x, y) = (0.625, 0.375) is the centre of pixel (row 1, col 2); level 1 (2x2):
    # (0.75, 0.25) is the centre of pixel (row 0, col 1).
    reference = torch.tensor([[0.625, 0.375], [0.75, 0.25]], dtype=torch.float64).view(1, 1, 2, 2)
    query = torch.randn(1, 1, 8, dtype=torch.float64)
    out = module(query, reference, flat, spatial_shapes, level_start_index)
    expected = (flat[0, 1 * 4 + 2] + flat[0, 16 + 0 * 2 + 1]) / 2
    torch.testing.assert_close(out[0, 0], expected)


def test_module_padding_mask_hides_tokens():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    shapes = ((4, 4), (2, 2))
    query, reference, flat, spatial_shapes, level_start_index = module_inputs(
        module, shapes, N=1, Lq=6
    )
    mask = torch.zeros(1, flat.shape[1], dtype=torch.bool)
    mask[0, 2:9] = True
    out = module(query, reference, flat, spatial_shapes, level_start_index, mask)
    changed = flat.clone()
    changed[mask] += 100.0
    torch.testing.assert_close(
        module(query, reference, changed, spatial_shapes, level_start_index, mask), out
    )
    assert not torch.allclose(
        module(query, reference, changed, spatial_shapes, level_start_index), out
    )


def test_module_gradients_reach_every_parameter():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    with torch.no_grad():
        module.attention_weights.weight.normal_(0, 0.5)
    query, reference, flat, spatial_shapes, level_start_index = module_inputs(
        module, ((4, 4), (2, 2)), N=2, Lq=5
    )
    module(query, reference, flat, spatial_shapes, level_start_index).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_module_shape_errors():
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    query, reference, flat, spatial_shapes, level_start_index = module_inputs(
        module, ((4, 4), (2, 2)), N=2, Lq=5
    )
    ok = (query, reference, flat, spatial_shapes, level_start_index)

    def call(mask=None, **changes):
        names = ["query", "reference_points", "input_flatten", "input_spatial_shapes"]
        args = dict(zip(names + ["input_level_start_index"], ok))
        args.update(changes)
        return module(**args, input_padding_mask=mask)

    with pytest.raises(ValueError, match=r"query must be \(N, Lq, 16\)"):
        call(query=query[..., :8])
    with pytest.raises(ValueError, match="reference_points must end in 2 .points. or 4 .boxes."):
        call(reference_points=torch.rand(2, 5, 2, 3))
    with pytest.raises(ValueError, match="reference_points must be"):
        call(reference_points=torch.rand(2, 5, 3, 2))
    with pytest.raises(ValueError, match="input_flatten must be"):
        call(input_flatten=flat[:1])
    with pytest.raises(ValueError, match="input has 20 tokens but input_spatial_shapes"):
        call(input_spatial_shapes=torch.tensor([[4, 4], [1, 2]]))
    with pytest.raises(ValueError, match="input_spatial_shapes must be"):
        call(input_spatial_shapes=spatial_shapes[:1])
    with pytest.raises(ValueError, match="input_level_start_index .0, 15. does not match"):
        call(input_level_start_index=torch.tensor([0, 15]))
    with pytest.raises(ValueError, match="input_padding_mask must be"):
        call(mask=torch.zeros(2, 19, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be divisible by n_heads"):
        MSDeformAttn(d_model=10, n_levels=1, n_heads=4, n_points=1)
