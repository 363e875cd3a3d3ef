"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021).

Shapes used throughout (Deformable-DETR notation):

* ``value``: ``(N, S, M, D)``, ``S = sum_l H_l * W_l`` flattened tokens of all levels, ``M`` heads,
  ``D`` channels per head;
* ``spatial_shapes``: ``(L, 2)`` int64, ``(H_l, W_l)`` of each level;
* ``level_start_index``: ``(L,)`` int64, offset of each level in ``S``;
* ``sampling_locations``: ``(N, Lq, M, L, P, 2)``, ``(x, y)`` normalised to ``[0, 1]`` over each
  level (pixel centres at ``(i + 0.5) / W``, the ``align_corners=False`` convention);
* ``attention_weights``: ``(N, Lq, M, L, P)``;
* output: ``(N, Lq, M * D)``.

Samples outside a level read zeros (bilinear interpolation with zero padding).

Implementations. :func:`ms_deform_attn` runs the compiled kernels of ``clusterformer._C`` (CPU:
float32/float64; CUDA: float32/float16/bfloat16/float64) when the extension is built for the
inputs' device, and otherwise the pure-PyTorch reference :func:`ms_deform_attn_pytorch`, warning
once per process that the extension is missing. ``CLUSTERFORMER_DISABLE_EXT=1`` (read at every
eager call; by ``torch.compile`` when it traces), ``use_extension=False`` or the :func:`reference_implementation` context forces the
reference. Inputs of different floating dtypes are
promoted to a common one. float16/bfloat16 inputs on the CPU are computed in float32 (upcast,
then the output is cast back), in either implementation.

The compiled kernels are a dispatcher operator, ``torch.ops.clusterformer.ms_deform_attn``
(registered in C++ when ``clusterformer._C`` is imported, with CPU, CUDA, Meta and Autograd
kernels; its gradient is ``torch.ops.clusterformer.ms_deform_attn_backward``). ``torch.compile``
and ``torch.export`` therefore trace through it without a graph break, and ``torch.jit.trace``
records it as one node.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Iterator, Set

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from clusterformer import _C
except (ImportError, OSError) as _error:  # not built, or built against another torch
    _C = None
    _C_IMPORT_ERROR: str | None = f"{type(_error).__name__}: {_error}"
else:
    _C_IMPORT_ERROR = None
    # Importing _C registers the operator; a build from before it existed has only the pybind
    # functions, which this module no longer calls, so treat it as not built.
    if not hasattr(torch.ops.clusterformer, "ms_deform_attn"):
        _C = None
        _C_IMPORT_ERROR = (
            "clusterformer._C predates the dispatcher operator clusterformer::ms_deform_attn; "
            "rebuild it"
        )

DISABLE_EXTENSION_ENV = "CLUSTERFORMER_DISABLE_EXT"
# Device types with compiled kernels. CPU kernels take float32/float64 (float16/bfloat16 CPU inputs
# are upcast to float32 first); CUDA kernels take float32/float64/float16/bfloat16.
_KERNEL_DEVICES = ("cpu", "cuda")
_CPU_UPCAST_DTYPES = (torch.float16, torch.bfloat16)
# Reasons already warned about in this process (each fallback warns once).
_warned: Set[str] = set()
# Depth of the active reference_implementation() contexts; > 0 forces the PyTorch reference.
_reference_depth = 0


@contextlib.contextmanager
def reference_implementation() -> Iterator[None]:
    """Run every :func:`ms_deform_attn` call inside the context with the pure-PyTorch reference
    (``grid_sample``), whatever ``use_extension`` says.

    ONNX export needs it (ONNX has no counterpart of the custom operator
    ``clusterformer::ms_deform_attn``), and so does a TorchScript file meant to run where
    ``clusterformer._C`` is not built: ``torch.jit.trace`` records the operator as one node, which
    only loads where the extension is imported. Nestable; not thread-local (export from one
    thread).
    """
    global _reference_depth
    _reference_depth += 1
    try:
        yield
    finally:
        _reference_depth -= 1


def reference_implementation_forced() -> bool:
    """Whether a :func:`reference_implementation` context is active."""
    return _reference_depth > 0


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def extension_available(device: torch.device | str = "cpu") -> bool:
    """Whether ``clusterformer._C`` is importable and has kernels for ``device``'s type."""
    device_type = torch.device(device).type
    if _C is None or device_type not in _KERNEL_DEVICES:
        return False
    return device_type == "cpu" or bool(_C.with_cuda)


def _check_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> None:
    """Raises ValueError/TypeError naming the argument whose shape, dtype or device is wrong."""
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be (N, S, M, D), got {tuple(value.shape)}")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must be (L, 2), got {tuple(spatial_shapes.shape)}"
        )
    N, _, M, _ = value.shape
    L = spatial_shapes.shape[0]
    if tuple(level_start_index.shape) != (L,):
        raise ValueError(
            f"ms_deform_attn: level_start_index must be (L,) = ({L},), "
            f"got {tuple(level_start_index.shape)}"
        )
    loc_shape = tuple(sampling_locations.shape)
    if len(loc_shape) != 6 or loc_shape[0] != N or loc_shape[2:4] != (M, L) or loc_shape[5] != 2:
        raise ValueError(
            f"ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2) with N={N}, M={M}, "
            f"L={L}, got {loc_shape}"
        )
    expected = loc_shape[:5]
    if tuple(attention_weights.shape) != expected:
        raise ValueError(
            f"ms_deform_attn: attention_weights must be (N, Lq, M, L, P) = {expected}, "
            f"got {tuple(attention_weights.shape)}"
        )
    for name, tensor in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        # dtype attributes rather than tensor methods: dynamo in torch 2.3 cannot trace
        # Tensor.is_complex(), and torch.export must not break the graph here.
        if not tensor.dtype.is_floating_point:
            raise TypeError(f"ms_deform_attn: {name} must be a floating tensor, got {tensor.dtype}")
    for name, tensor in (
        ("spatial_shapes", spatial_shapes),
        ("level_start_index", level_start_index),
    ):
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise TypeError(f"ms_deform_attn: {name} must be an integer tensor, got {tensor.dtype}")
    for name, tensor in (
        ("spatial_shapes", spatial_shapes),
        ("level_start_index", level_start_index),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if tensor.device != value.device:
            raise ValueError(
                f"ms_deform_attn: {name} is on {tensor.device} but value is on {value.device}; "
                "move all inputs to one device"
            )


def ms_deform_attn_pytorch(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Reference implementation with ``grid_sample``; see the module docstring for shapes.

    ``level_start_index`` is not read: levels are taken to be stored one after the other in the
    order of ``spatial_shapes`` (their sizes must add up to ``S``).
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != S:
        raise ValueError(
            f"ms_deform_attn: value has {S} tokens but spatial_shapes {shapes} "
            f"describe {sum(sizes)}"
        )
    value_per_level = value.split(sizes, dim=1)
    # grid_sample wants coordinates in [-1, 1].
    grids = 2.0 * sampling_locations - 1.0
    # (N, Lq, M, L, P) -> (N*M, Lq, L, P)
    weights = attention_weights.transpose(1, 2).reshape(N * M, Lq, L, P)
    out = value.new_zeros(N * M, D, Lq)
    for lvl, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_per_level[lvl].flatten(2).transpose(1, 2).reshape(N * M, D, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        # (N*M, D, Lq, P) weighted by (N*M, 1, Lq, P), summed over the points; accumulating level
        # by level keeps one level's samples in memory at a time.
        out = out + (sampled * weights[:, None, :, lvl]).sum(-1)
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous()


def _disabled_by_environment() -> bool:
    """Whether ``CLUSTERFORMER_DISABLE_EXT`` forces the reference."""
    return os.environ.get(DISABLE_EXTENSION_ENV, "0") not in ("", "0")


# Dynamo cannot trace os.environ on torch 2.3 (a graph break, which torch.export refuses), so it
# calls this function at trace time and keeps the result as a constant of the graph. This is what
# torch.compiler.assume_constant_result(fn) does (it sets this attribute, on torch 2.3 and 2.14
# alike); set directly because that function imports torch._dynamo, which costs every process a
# second at import. tests/modeling/test_compile.py (fullgraph=True) fails if dynamo stops honouring it.
_disabled_by_environment._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _use_extension(device: torch.device, use_extension: bool | None) -> bool:
    """Decides between the compiled kernels and the reference (see :func:`ms_deform_attn`)."""
    if _reference_depth > 0:
        return False
    if use_extension is None:
        if _disabled_by_environment():
            return False
    elif not use_extension:
        return False
    if extension_available(device):
        return True
    if _C is None:
        reason = f"clusterformer._C could not be imported ({_C_IMPORT_ERROR})"
        hint = "build it with `make build` or `python setup.py build_ext --inplace`"
        key = "missing"
    else:
        reason = f"clusterformer._C has no kernels for {device.type} tensors"
        hint = "rebuild it where a CUDA toolkit matches torch, or with FORCE_CUDA=1"
        key = f"device:{device.type}"
    if use_extension:
        raise RuntimeError(f"ms_deform_attn: use_extension=True but {reason}; {hint}")
    _warn_once(
        key,
        f"{reason}: multi-scale deformable attention falls back to the slower pure-PyTorch "
        f"reference; {hint}.",
    )
    return False


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    use_extension: bool | None = None,
) -> Tensor:
    """Multi-scale deformable attention, dispatched to the fastest implementation available.

    Args:
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights: see the
            module docstring.
        use_extension: ``None`` (default): the compiled kernels when ``clusterformer._C`` has them
            for the inputs' device and ``CLUSTERFORMER_DISABLE_EXT`` is unset, else the reference
            (warning once if the extension is missing). ``False``: always the reference. ``True``:
            the compiled kernels, raising RuntimeError if they are unavailable. Inside a
            :func:`reference_implementation` context the reference runs in every case.

    Returns:
        ``(N, Lq, M * D)`` in the promoted dtype of value, sampling_locations and
        attention_weights.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    dtype = torch.promote_types(
        torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype
    )
    compute_dtype = dtype
    if value.device.type == "cpu" and dtype in _CPU_UPCAST_DTYPES:
        compute_dtype = torch.float32
    value = value.to(compute_dtype)
    sampling_locations = sampling_locations.to(compute_dtype)
    attention_weights = attention_weights.to(compute_dtype)
    if _use_extension(value.device, use_extension):
        # The dispatcher operator: its Autograd kernel (C++) gives the gradients, its Meta kernel
        # the shapes when torch.compile / torch.export trace it.
        output = torch.ops.clusterformer.ms_deform_attn(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    else:
        output = ms_deform_attn_pytorch(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return output.to(dtype)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module with Deformable DETR's initialisation.

    Args:
        d_model: channels of queries and values; must be divisible by ``n_heads``.
        n_levels: number of feature levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(
                f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})"
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        # Each head starts looking in its own direction, point k at distance k (in level pixels).
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            query: ``(N, Lq, C)``.
            reference_points: ``(N, Lq, L, 2)`` normalised ``(x, y)`` in ``[0, 1]``, or
                ``(N, Lq, L, 4)`` boxes ``(cx, cy, w, h)`` whose size scales the offsets.
            input_flatten: ``(N, S, C)`` tokens of all levels.
            input_spatial_shapes: ``(L, 2)`` int64 ``(H_l, W_l)``.
            input_level_start_index: ``(L,)`` int64.
            input_padding_mask: ``(N, S)`` bool, True at padded tokens (they are zeroed).

        Returns:
            ``(N, Lq, C)``.
        """
        self._check_token_shapes(query, reference_points, input_flatten, input_padding_mask)
        N, Lq, C = query.shape
        S = input_flatten.shape[1]
        self._check_level_layout(input_spatial_shapes, input_level_start_index, S)
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, M, C // M)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = (
            self.attention_weights(query).view(N, Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)
        )
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalise by (W_l, H_l).
            normalizer = torch.stack(
                [input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1
            )
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[
                None, None, None, :, None, :
            ].to(offsets.dtype)
        else:
            # Boxes (cx, cy, w, h): offsets are fractions of half the box size per point.
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        out = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights
        )
        return self.output_proj(out)

    def _check_token_shapes(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_padding_mask: Tensor | None,
    ) -> None:
        """Raises ValueError naming the first argument whose shape disagrees with the others."""
        C, L = self.d_model, self.n_levels
        if query.dim() != 3 or query.shape[2] != C:
            raise ValueError(f"MSDeformAttn: query must be (N, Lq, {C}), got {tuple(query.shape)}")
        N, Lq, _ = query.shape
        if input_flatten.dim() != 3 or input_flatten.shape[0] != N or input_flatten.shape[2] != C:
            raise ValueError(
                f"MSDeformAttn: input_flatten must be (N, S, C) = ({N}, S, {C}), "
                f"got {tuple(input_flatten.shape)}"
            )
        S = input_flatten.shape[1]
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (N, Lq, L):
            raise ValueError(
                f"MSDeformAttn: reference_points must be (N, Lq, L, 2 or 4) = ({N}, {Lq}, {L}, 2 "
                f"or 4), got {tuple(reference_points.shape)}"
            )
        if reference_points.shape[3] not in (2, 4):
            raise ValueError(
                "MSDeformAttn: reference_points must end in 2 (points) or 4 (boxes), got "
                f"{tuple(reference_points.shape)}"
            )
        if input_padding_mask is not None and tuple(input_padding_mask.shape) != (N, S):
            raise ValueError(
                f"MSDeformAttn: input_padding_mask must be (N, S) = ({N}, {S}), "
                f"got {tuple(input_padding_mask.shape)}"
            )

    def _check_level_layout(
        self, input_spatial_shapes: Tensor, input_level_start_index: Tensor, S: int
    ) -> None:
        """Raises ValueError unless the ``(L, 2)`` level shapes and ``(L,)`` start indices
        describe the ``S`` tokens of ``input_flatten``, level after level."""
        L = self.n_levels
        if tuple(input_spatial_shapes.shape) != (L, 2):
            raise ValueError(
                f"MSDeformAttn: input_spatial_shapes must be (n_levels, 2) = ({L}, 2), "
                f"got {tuple(input_spatial_shapes.shape)}"
            )
        if tuple(input_level_start_index.shape) != (L,):
            raise ValueError(
                f"MSDeformAttn: input_level_start_index must be (n_levels,) = ({L},), "
                f"got {tuple(input_level_start_index.shape)}"
            )
        # One host read of the L + 2L index values: worth it in eager mode, since a mismatch would
        # make the kernels sample the wrong tokens. A tracer cannot follow it (under torch.compile
        # a data-dependent read is a graph break, torch.export rejects it, torch.jit.trace bakes
        # the values in), so traced graphs skip it: the callers build both tensors from the
        # feature maps' shapes, which the trace fixes or guards anyway.
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return
        flat = torch.cat([input_spatial_shapes.flatten(), input_level_start_index]).tolist()
        shapes, starts = flat[: 2 * L], flat[2 * L :]
        sizes = [h * w for h, w in zip(shapes[0::2], shapes[1::2])]
        if sum(sizes) != S:
            raise ValueError(
                f"MSDeformAttn: input has {S} tokens but input_spatial_shapes "
                f"{input_spatial_shapes.tolist()} describe {sum(sizes)}"
            )
        expected_starts = [sum(sizes[:lvl]) for lvl in range(L)]
        if starts != expected_starts:
            raise ValueError(
                f"MSDeformAttn: input_level_start_index {starts} does not match the level sizes "
                f"{sizes} (expected {expected_starts})"
            )
