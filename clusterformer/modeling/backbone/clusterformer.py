"""The ClusterFormer backbone (docs/method.md §1): image-level clustering, plain PyTorch.

``ClusterFormerBackbone(images) -> {"res2": ..., "res5": ...}``. The RGB image gets two coordinate
channels, a 4x4 stride-4 stem embeds the 5 channels, and four stages of clustering blocks run at
strides 4/8/16/32, joined by 3x3 stride-2 convolutions. The output at stride s has
``ceil(H / s) x ceil(W / s)`` tokens for any input of at least 32 x 32 pixels.
"""

import inspect
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clustering_mixer import ClusteringMixer
from .window_attention_mixer import WindowAttentionMixer
from .windows import PointwiseConv2d

STAGE_NAMES = ("res2", "res3", "res4", "res5")
MIXERS = ("clustering", "window_attention")
STAGE_STRIDES = (4, 8, 16, 32)
MIN_INPUT_SIZE = 32
# The ClusteringMixer settings that ClusterFormerBackbone passes to every mixer unchanged.
CLUSTERING_SETTINGS = (
    "window_size",
    "centres_per_window",
    "iterations",
    "temperature",
    "mstep_normalization",
    "assignment_softmax",
    "dispatch",
)


class StageClusterIds(NamedTuple):
    """The hard clusters of one stage's last block (its last E-step), at that stage's stride.

    Attributes:
        ids: ``(B, heads, ceil(H / stride), ceil(W / stride))`` int64, the argmax of the
            assignment over the centres; unique across windows (``window * num_centres + centre``).
        stride: the stage's stride in input pixels (token ``(i, j)`` covers pixels
            ``[i s, (i + 1) s) x [j s, (j + 1) s)`` of the bottom/right-padded input).
        num_centres: centres per window and head (``k * k``): ``ids // num_centres`` is the
            window of each token.
    """

    ids: Tensor
    stride: int
    num_centres: int


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth: zero the whole residual branch of a sample with probability drop_prob."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class ConvFeedForward(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv, (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = PointwiseConv2d(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = PointwiseConv2d(hidden_dim, dim)
        for conv in (self.fc1, self.fc2):
            nn.init.trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ClusterBlock(nn.Module):
    """Pre-norm block: ``x += ls1 * drop_path(Mixer(GN(x)))``; ``x += ls2 * drop_path(FFN(GN(x)))``.

    GN is GroupNorm(1, C); the LayerScale vectors start at ``layer_scale_init`` (None: no scale).
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        drop_path_rate: float = 0.0,
        layer_scale_init: Optional[float] = 1e-5,
        mixer: str = "clustering",
        **mixer_kwargs: Any,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        if mixer == "clustering":
            self.mixer = ClusteringMixer(dim, **mixer_kwargs)
        elif mixer == "window_attention":
            self.mixer = WindowAttentionMixer(
                dim,
                num_heads=mixer_kwargs["num_heads"],
                head_dim=mixer_kwargs["head_dim"],
                window_size=mixer_kwargs["window_size"],
            )
        else:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}.")
        self.norm2 = nn.GroupNorm(1, dim)
        self.ffn = ConvFeedForward(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path_rate)
        if layer_scale_init is not None:
            self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale_init)))
            self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale_init)))
        else:
            self.layer_scale_1 = self.layer_scale_2 = None

    def forward(
        self, x: Tensor, return_cluster_ids: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Optional[Tensor]]]:
        """(B, C, H, W) -> (B, C, H, W); with ``return_cluster_ids`` also the mixer's
        (B, heads, H, W) int64 cluster ids (None for a mixer that does not cluster)."""
        cluster_ids = None
        if return_cluster_ids and isinstance(self.mixer, ClusteringMixer):
            mixed, cluster_ids = self.mixer(self.norm1(x), return_cluster_ids=True)
        else:
            mixed = self.mixer(self.norm1(x))
        if self.layer_scale_1 is not None:
            mixed = self.layer_scale_1 * mixed
        x = x + self.drop_path(mixed)
        fed = self.ffn(self.norm2(x))
        if self.layer_scale_2 is not None:
            fed = self.layer_scale_2 * fed
        x = x + self.drop_path(fed)
        return (x, cluster_ids) if return_cluster_ids else x


class Downsample(nn.Module):
    """Stride-2 convolution between stages: (B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2)).

    kernel_size 3 (padding 1; docs/method.md and the released tiny/small presets) or 2 (no overlap; the
    released base class's default, which matches the paper's parameter counts). With kernel 2 an
    odd map is zero-padded on the bottom/right first.
    """

    def __init__(self, in_dim: int, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size not in (2, 3):
            raise ValueError(f"downsample_kernel_size must be 2 or 3, got {kernel_size}.")
        self.conv = nn.Conv2d(
            in_dim, dim, kernel_size=kernel_size, stride=2, padding=1 if kernel_size == 3 else 0
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.conv.kernel_size[0] == 2:
            pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.conv(x)


class ClusterStage(nn.Module):
    """Optional :class:`Downsample` followed by clustering blocks."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        downsample: bool,
        blocks: List[ClusterBlock],
        downsample_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.downsample = Downsample(in_dim, dim, downsample_kernel_size) if downsample else None
        self.blocks = nn.ModuleList(blocks)

    def forward(
        self, x: Tensor, return_cluster_ids: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Optional[Tensor]]]:
        """(B, C_in, H, W) -> (B, C, H', W'); with ``return_cluster_ids`` also the last block's
        (B, heads, H', W') int64 cluster ids (None without blocks or clustering)."""
        if self.downsample is not None:
            x = self.downsample(x)
        cluster_ids = None
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if return_cluster_ids and i == last:
                x, cluster_ids = block(x, return_cluster_ids=True)
            else:
                x = block(x)
        return (x, cluster_ids) if return_cluster_ids else x


def coordinate_channels(images: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 2, H, W): x (column) then y (row), each linear in [-0.5, 0.5]."""
    B, _, H, W = images.shape
    kwargs = {"device": images.device, "dtype": images.dtype}
    xs = torch.linspace(-0.5, 0.5, W, **kwargs).view(1, 1, 1, W).expand(B, 1, H, W)
    ys = torch.linspace(-0.5, 0.5, H, **kwargs).view(1, 1, H, 1).expand(B, 1, H, W)
    return torch.cat([xs, ys], dim=1)


class ClusterFormerBackbone(nn.Module):
    """ClusterFormer image-level clustering backbone.

    Args:
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        mlp_ratios: FFN hidden width / channels, per stage.
        head_dim: channels per head; heads = embed_dim / head_dim in each stage.
        window_size: S, clustering windows of S x S tokens.
        centres_per_window: k, k x k centres per window and head.
        iterations: T, E-step/M-step iterations (shared weights).
        temperature: "none" or "inv_sqrt_dim", scale of the E-step logits.
        mstep_normalization: "mean" or "sum".
        assignment_softmax: "clusters" (paper) or "tokens" (ordinary cross-attention).
        dispatch: "soft" (paper Eq. 6) or "hard" (released code).
        layer_scale_init: initial LayerScale value (None: no LayerScale).
        drop_path_rate: stochastic depth of the last block, linear from 0 over all blocks.
        out_features: which of res2..res5 to return; stages after the last requested one are
            not built (so every parameter gets a gradient).
        in_channels: image channels (the coordinate channels are added to these).
        downsample_kernel_size: 3 (3x3 stride-2 convs between stages, default) or 2.
        mixer: "clustering" (ClusterFormer) or "window_attention" (the same network with window
            self-attention instead of clustering: a non-clustering baseline for comparisons;
            the clustering arguments are then unused).

    Input: (B, in_channels, H, W) normalised images (RGB for the project's pretrained models),
    H, W >= 32. Output: {name: (B, C_s, ceil(H / s), ceil(W / s))}, each after a GroupNorm(1, C).
    ``forward(images, return_cluster_ids=True)`` returns ``(features, cluster_ids)``, with
    ``cluster_ids`` ``{name: StageClusterIds}`` for every built stage whose last block clusters
    (the stages after the last output are not built).
    """

    def __init__(
        self,
        *,
        embed_dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        mlp_ratios: Sequence[float] = (8.0, 8.0, 4.0, 4.0),
        head_dim: int = 32,
        window_size: int = 7,
        centres_per_window: int = 2,
        iterations: int = 3,
        temperature: str = "none",
        mstep_normalization: str = "mean",
        assignment_softmax: str = "clusters",
        dispatch: str = "soft",
        layer_scale_init: Optional[float] = 1e-5,
        drop_path_rate: float = 0.0,
        out_features: Sequence[str] = STAGE_NAMES,
        in_channels: int = 3,
        downsample_kernel_size: int = 3,
        mixer: str = "clustering",
    ) -> None:
        super().__init__()
        for name, seq in (
            ("embed_dims", embed_dims),
            ("depths", depths),
            ("mlp_ratios", mlp_ratios),
        ):
            if len(seq) != 4:
                raise ValueError(f"{name} needs 4 values (one per stage), got {list(seq)}.")
        bad_dims = [d for d in embed_dims if d % head_dim != 0]
        if bad_dims:
            raise ValueError(
                f"embed_dims {list(embed_dims)} must be multiples of head_dim {head_dim}."
            )
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(
                f"out_features must be a non-empty subset of {STAGE_NAMES}, got {out_features}."
            )
        self._out_features = [f for f in STAGE_NAMES if f in out_features]
        num_stages = num_stages_needed(self._out_features)
        self.embed_dims = list(embed_dims[:num_stages])
        self.num_heads = [d // head_dim for d in self.embed_dims]
        self.in_channels = in_channels

        self.stem = nn.Conv2d(in_channels + 2, embed_dims[0], kernel_size=4, stride=4)
        total_blocks = sum(depths)
        block_index = 0
        stages = []
        for i in range(num_stages):
            blocks = []
            for _ in range(depths[i]):
                rate = drop_path_rate * block_index / max(total_blocks - 1, 1)
                blocks.append(
                    ClusterBlock(
                        embed_dims[i],
                        mlp_ratio=mlp_ratios[i],
                        drop_path_rate=rate,
                        layer_scale_init=layer_scale_init,
                        num_heads=embed_dims[i] // head_dim,
                        head_dim=head_dim,
                        window_size=window_size,
                        centres_per_window=centres_per_window,
                        iterations=iterations,
                        temperature=temperature,
                        mstep_normalization=mstep_normalization,
                        assignment_softmax=assignment_softmax,
                        dispatch=dispatch,
                        mixer=mixer,
                    )
                )
                block_index += 1
            in_dim = embed_dims[i - 1] if i > 0 else embed_dims[0]
            stages.append(
                ClusterStage(
                    in_dim,
                    embed_dims[i],
                    downsample=i > 0,
                    blocks=blocks,
                    downsample_kernel_size=downsample_kernel_size,
                )
            )
        self.stages = nn.ModuleList(stages)
        self.output_norms = nn.ModuleDict(
            {f: nn.GroupNorm(1, embed_dims[STAGE_NAMES.index(f)]) for f in self._out_features}
        )
        self._out_feature_channels = {
            f: embed_dims[STAGE_NAMES.index(f)] for f in self._out_features
        }
        self._out_feature_strides = {
            f: STAGE_STRIDES[STAGE_NAMES.index(f)] for f in self._out_features
        }

    @property
    def out_features(self) -> List[str]:
        return list(self._out_features)

    @property
    def out_feature_channels(self) -> Dict[str, int]:
        return dict(self._out_feature_channels)

    @property
    def out_feature_strides(self) -> Dict[str, int]:
        return dict(self._out_feature_strides)

    def forward(
        self, images: Tensor, return_cluster_ids: bool = False
    ) -> Union[Dict[str, Tensor], Tuple[Dict[str, Tensor], Dict[str, StageClusterIds]]]:
        """(B, in_channels, H, W) -> {res_i: (B, C_i, ceil(H / s_i), ceil(W / s_i))}; with
        ``return_cluster_ids``, ``(that, {res_i: StageClusterIds})``: the hard clusters of the
        last block of every stage, ids ``(B, heads_i, ceil(H / s_i), ceil(W / s_i))`` int64."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"ClusterFormerBackbone expects images of shape (B, {self.in_channels}, H, W), "
                f"got {tuple(images.shape)}."
            )
        H, W = images.shape[-2:]
        if H < MIN_INPUT_SIZE or W < MIN_INPUT_SIZE:
            raise ValueError(
                f"ClusterFormerBackbone needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
                f"pixels (one token at stride 32), got {H}x{W}."
            )
        x = torch.cat([images, coordinate_channels(images)], dim=1)
        # Pad bottom/right to a multiple of the stem stride, so the stem yields ceil(H/4) tokens.
        pad_h, pad_w = -H % 4, -W % 4
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        # channels_last from here on: the 1x1 convolutions (PointwiseConv2d), GroupNorms and
        # elementwise ops keep it, and the window partition copies runs of channels (see
        # windows.py); measured in docs/benchmarks.md. The outputs are channels_last too.
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        outputs = {}
        cluster_ids: Dict[str, StageClusterIds] = {}
        for name, stride, stage in zip(STAGE_NAMES, STAGE_STRIDES, self.stages):
            if return_cluster_ids:
                x, ids = stage(x, return_cluster_ids=True)
                if ids is not None:
                    mixer = stage.blocks[-1].mixer
                    cluster_ids[name] = StageClusterIds(ids, stride, mixer.num_centres)
            else:
                x = stage(x)
            if name in self.output_norms:
                outputs[name] = self.output_norms[name](x)
        return (outputs, cluster_ids) if return_cluster_ids else outputs


PRESETS: Dict[str, Dict[str, Any]] = {
    # For CPU runs and tests: trains in about a second per iteration at 128x128 on a CPU core.
    "nano": {
        "embed_dims": (32, 64, 128, 256),
        "depths": (1, 1, 2, 1),
        "mlp_ratios": (4.0, 4.0, 4.0, 4.0),
        "head_dim": 16,
    },
    "tiny": {
        "embed_dims": (96, 192, 384, 768),
        "depths": (2, 2, 6, 2),
        "mlp_ratios": (8.0, 8.0, 4.0, 4.0),
        "head_dim": 32,
    },
    "small": {
        "embed_dims": (96, 192, 384, 768),
        "depths": (2, 2, 18, 2),
        "mlp_ratios": (8.0, 8.0, 4.0, 4.0),
        "head_dim": 32,
    },
}


def clusterformer_preset(name: str) -> Dict[str, Any]:
    """The architecture keyword arguments of a preset ("nano", "tiny", "small")."""
    if name not in PRESETS:
        raise KeyError(f"Unknown ClusterFormer preset {name!r}; choose from {sorted(PRESETS)}.")
    return dict(PRESETS[name])


def default_clustering_settings() -> Dict[str, Any]:
    """The backbone's default (the paper's) :class:`ClusteringMixer` settings, by keyword.

    Read from :class:`ClusterFormerBackbone`'s signature, the one place they are written, for
    code that builds a mixer on its own (benchmarks, tests).
    """
    parameters = inspect.signature(ClusterFormerBackbone.__init__).parameters
    return {name: parameters[name].default for name in CLUSTERING_SETTINGS}


def build_clusterformer_backbone(preset: str = "tiny", **overrides: Any) -> ClusterFormerBackbone:
    """A :class:`ClusterFormerBackbone` from a preset, any keyword argument overridden."""
    return ClusterFormerBackbone(**{**clusterformer_preset(preset), **overrides})


def clusterformer_nano(**overrides: Any) -> ClusterFormerBackbone:
    return build_clusterformer_backbone("nano", **overrides)


def clusterformer_tiny(**overrides: Any) -> ClusterFormerBackbone:
    return build_clusterformer_backbone("tiny", **overrides)


def clusterformer_small(**overrides: Any) -> ClusterFormerBackbone:
    return build_clusterformer_backbone("small", **overrides)


def num_stages_needed(out_features: Sequence[str]) -> int:
    """How many stages produce ``out_features`` (e.g. 4 when res5 is requested)."""
    return max(STAGE_NAMES.index(f) for f in out_features) + 1
