"""The ClusterFormer backbone: shapes, gradients, presets, assignment maps, classification head."""

import itertools
import math
import os
import subprocess
import sys

import pytest
import torch

from clusterformer.modeling.backbone import (
    ClassificationHead,
    ClusterFormerBackbone,
    build_clusterformer_backbone,
    clusterformer_nano,
    clusterformer_preset,
    coordinate_channels,
    global_pool_features,
)

# Parameter counts of the backbone (stem, stages, output GroupNorms; no classifier), as recorded
# in docs/backbone_complexity.md (tools/count_params_flops.py).
DOCUMENTED_PARAMS_M = {"nano": 1.64, "tiny": 30.21, "small": 51.53}
# With 2x2 downsampling convs: the paper's "about 28M / 49M".
DOCUMENTED_PARAMS_M_DOWNSAMPLE_2 = {"tiny": 28.27, "small": 49.60}

FLAG_GRID = list(
    itertools.product(
        ("none", "inv_sqrt_dim"), ("mean", "sum"), ("clusters", "tokens"), ("soft", "hard")
    )
)


def expected_shapes(backbone, batch, H, W):
    return {
        name: (batch, backbone.out_feature_channels[name], math.ceil(H / s), math.ceil(W / s))
        for name, s in backbone.out_feature_strides.items()
    }


@pytest.mark.parametrize("downsample_kernel_size", [3, 2])
@pytest.mark.parametrize("size", [(33, 47), (225, 300), (32, 32), (64, 33)])
def test_odd_and_non_square_inputs(size, downsample_kernel_size):
    backbone = clusterformer_nano(downsample_kernel_size=downsample_kernel_size).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, *size))
    assert {k: tuple(v.shape) for k, v in out.items()} == expected_shapes(backbone, 1, *size)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_bad_inputs_raise_clear_errors():
    backbone = clusterformer_nano()
    with pytest.raises(ValueError, match="at least 32x32"):
        backbone(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        backbone(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="multiples of head_dim"):
        ClusterFormerBackbone(embed_dims=(40, 64, 128, 256), head_dim=32)
    with pytest.raises(ValueError, match="out_features"):
        ClusterFormerBackbone(out_features=("res6",))
    with pytest.raises(KeyError, match="preset"):
        clusterformer_preset("huge")
    with pytest.raises(ValueError, match="downsample_kernel_size"):
        clusterformer_nano(downsample_kernel_size=4)


def test_coordinate_channels():
    coords = coordinate_channels(torch.zeros(2, 3, 5, 9))
    assert coords.shape == (2, 2, 5, 9)
    torch.testing.assert_close(coords[0, 0, 3], torch.linspace(-0.5, 0.5, 9))  # x along width
    torch.testing.assert_close(coords[1, 1, :, 4], torch.linspace(-0.5, 0.5, 5))  # y along height


def test_coordinates_reach_the_stem():
    """The stem sees 5 channels; the same image at a different place in a bigger canvas differs."""
    backbone = clusterformer_nano()
    assert backbone.stem.in_channels == 5
    image = torch.randn(1, 3, 32, 32)
    stem_out = backbone.stem(torch.cat([image, coordinate_channels(image)], 1))
    with torch.no_grad():
        backbone.stem.weight[:, 3:].zero_()
    assert not torch.allclose(
        stem_out, backbone.stem(torch.cat([image, coordinate_channels(image)], 1))
    )


@pytest.mark.parametrize("temperature, mstep, axis, dispatch", FLAG_GRID)
def test_every_parameter_gets_a_gradient(temperature, mstep, axis, dispatch):
    backbone = clusterformer_nano(
        temperature=temperature,
        mstep_normalization=mstep,
        assignment_softmax=axis,
        dispatch=dispatch,
        iterations=2,
        layer_scale_init=0.5,
    )
    out = backbone(torch.randn(2, 3, 64, 48))  # padded windows at res2/res3, maps < 7 later
    sum((v * torch.randn_like(v)).sum() for v in out.values()).backward()
    missing = [n for n, p in backbone.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    zero = [n for n, p in backbone.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters())


def test_partial_out_features_build_only_needed_stages():
    backbone = clusterformer_nano(out_features=["res3", "res2"])
    assert backbone.out_features == ["res2", "res3"] and len(backbone.stages) == 2
    out = backbone(torch.randn(1, 3, 64, 64))
    assert set(out) == {"res2", "res3"}
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_ddp_without_find_unused_parameters(tmp_path):
    """Two DDP steps (gloo, one process): DDP fails if a parameter got no gradient."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = DistributedDataParallel(
            clusterformer_nano(dispatch="hard"), find_unused_parameters=False
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            out = model(torch.randn(2, 3, 64, 64))
            sum(v.mean() for v in out.values()).backward()
            opt.step()
            opt.zero_grad()
    finally:
        dist.destroy_process_group()


def test_drop_path_and_layer_scale():
    backbone = clusterformer_nano(drop_path_rate=0.2, layer_scale_init=1e-5)
    rates = [b.drop_path.drop_prob for s in backbone.stages for b in s.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.2, len(rates)))
    block = backbone.stages[0].blocks[0]
    torch.testing.assert_close(block.layer_scale_1, torch.full((32, 1, 1), 1e-5))
    assert clusterformer_nano(layer_scale_init=None).stages[0].blocks[0].layer_scale_1 is None
    x = torch.randn(1, 3, 64, 64)
    backbone.eval()
    with torch.no_grad():
        a, b = backbone(x), backbone(x)
    assert all(torch.equal(a[k], b[k]) for k in a), "drop path must be off in eval mode"


def test_assignment_maps():
    backbone = clusterformer_nano(centres_per_window=2)
    x = torch.randn(2, 3, 100, 64)
    with torch.no_grad():
        out, stages = backbone(x, return_cluster_ids=True)
    maps = {name: stage.ids for name, stage in stages.items()}
    assert set(maps) == {"res2", "res3", "res4", "res5"}
    for name, ids in maps.items():
        B, _, h, w = out[name].shape
        heads = backbone.out_feature_channels[name] // 16
        assert ids.shape == (B, heads, h, w) and ids.dtype == torch.int64
        windows = math.ceil(h / min(7, h)) * math.ceil(w / min(7, w))
        assert ids.min() >= 0 and ids.max() < windows * 4
        assert stages[name].stride == backbone.out_feature_strides[name]
        assert stages[name].num_centres == 4
    # res2 is 25x16: the pixel (20, 15) lies in window (2, 2) of 4 x 3 windows.
    assert 8 * 4 <= maps["res2"][0, 0, 20, 15] < 9 * 4
    # Nothing is kept on the modules after the call.
    assert all(not hasattr(s.blocks[-1].mixer, "last_assignment") for s in backbone.stages)


def test_cluster_ids_are_the_argmax_of_the_last_blocks_last_estep():
    """The returned ids, recomputed from the assignment of each stage's last block (captured by
    a test hook): window ``w`` (row-major) holds ids ``w * k*k + argmax_k A[w, k, token]``. Off,
    the backbone returns its features only, bitwise the same."""
    torch.manual_seed(0)
    backbone = clusterformer_nano(centres_per_window=2).eval()
    x = torch.randn(2, 3, 112, 112)  # 28, 14, 7, 4 tokens: whole windows of min(7, side)
    captured = {}
    for name, stage in zip(["res2", "res3", "res4", "res5"], backbone.stages):
        stage.blocks[-1].mixer.clustering.register_forward_hook(
            lambda _m, _args, out, name=name: captured.update({name: out[1][-1]})
        )
    with torch.no_grad():
        features, stages = backbone(x, return_cluster_ids=True)
        plain = backbone(x)
    assert sorted(plain) == sorted(features) == ["res2", "res3", "res4", "res5"]
    assert all(torch.equal(plain[k], features[k]) for k in plain)
    for name, stage in stages.items():
        A = captured[name]  # (B, heads, windows, K, N)
        B, heads, h, w = stage.ids.shape
        side = min(7, h)
        per_row = w // side
        expected = torch.empty(B, heads, h, w, dtype=torch.int64)
        for r in range(h):
            for c in range(w):
                window = (r // side) * per_row + c // side
                token = (r % side) * side + c % side
                expected[:, :, r, c] = window * 4 + A[:, :, window, :, token].argmax(-1)
        assert torch.equal(stage.ids, expected), name


def test_nano_trains_under_autocast():
    backbone = clusterformer_nano(layer_scale_init=1.0)
    x = torch.randn(2, 3, 64, 80)
    reference = backbone(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = backbone(x)
    for name in reference:
        assert torch.isfinite(mixed[name]).all()
        error = (mixed[name].float() - reference[name]).abs().max().item()
        assert error < 0.08, f"{name}: bf16 autocast differs from fp32 by {error:.3g} (unit scale)"
    sum(v.float().mean() for v in mixed.values()).backward()


@pytest.mark.parametrize("dispatch", ["soft", "hard"])
def test_bfloat16_module_clusters_in_fp32(dispatch):
    backbone = clusterformer_nano(dispatch=dispatch).to(torch.bfloat16)
    captured = []
    mixer = backbone.stages[0].blocks[0].mixer
    mixer.clustering.register_forward_hook(lambda m, args, out: captured.append(out[0].dtype))
    out = backbone(torch.randn(1, 3, 64, 48, dtype=torch.bfloat16))
    assert captured == [torch.float32]
    assert all(v.dtype == torch.bfloat16 and torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("preset", ["nano", "tiny", "small"])
def test_parameter_counts(preset):
    with torch.device("meta"):
        backbone = build_clusterformer_backbone(preset)
    count = sum(p.numel() for p in backbone.parameters()) / 1e6
    documented = DOCUMENTED_PARAMS_M[preset]
    assert abs(count - documented) / documented < 0.02, f"{preset}: {count:.2f}M vs {documented}M"


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_parameter_counts_with_2x2_downsampling(preset):
    with torch.device("meta"):
        backbone = build_clusterformer_backbone(preset, downsample_kernel_size=2)
    count = sum(p.numel() for p in backbone.parameters()) / 1e6
    documented = DOCUMENTED_PARAMS_M_DOWNSAMPLE_2[preset]
    assert abs(count - documented) / documented < 0.02, f"{preset}: {count:.2f}M vs {documented}M"


def test_presets():
    tiny = clusterformer_preset("tiny")
    assert tiny["embed_dims"] == (96, 192, 384, 768) and tiny["depths"] == (2, 2, 6, 2)
    assert tiny["mlp_ratios"] == (8.0, 8.0, 4.0, 4.0) and tiny["head_dim"] == 32
    assert clusterformer_preset("small")["depths"] == (2, 2, 18, 2)
    with torch.device("meta"):
        small = build_clusterformer_backbone("small", iterations=1, dispatch="hard")
    mixer = small.stages[2].blocks[17].mixer
    assert (
        mixer.num_heads == 12 and mixer.clustering.iterations == 1 and mixer.dispatch.mode == "hard"
    )


@pytest.mark.parametrize("pooling, dim", [("last_stage", 256), ("all_stages", 32 + 64 + 128 + 256)])
def test_classification_head(pooling, dim):
    # With "last_stage" the backbone returns res5 only, so no output norm goes unused (DDP).
    out_features = ["res5"] if pooling == "last_stage" else ["res2", "res3", "res4", "res5"]
    backbone = clusterformer_nano(out_features=out_features)
    head = ClassificationHead(backbone.out_feature_channels, num_classes=10, pooling=pooling)
    assert head.pooled_dim == dim
    features = backbone(torch.randn(2, 3, 64, 64))
    logits = head(features)
    assert logits.shape == (2, 10)
    pooled = global_pool_features(features, backbone.out_features, pooling)
    torch.testing.assert_close(pooled[:, -256:], features["res5"].mean(dim=(-2, -1)))
    logits.sum().backward()
    assert all(p.grad is not None for p in list(backbone.parameters()) + list(head.parameters()))


def test_tiny_all_stages_pooling_is_1440d():
    channels = {"res2": 96, "res3": 192, "res4": 384, "res5": 768}
    assert ClassificationHead(channels, 1000, pooling="all_stages").pooled_dim == 1440
    with pytest.raises(ValueError, match="pooling"):
        ClassificationHead(channels, 1000, pooling="max")


def test_backbone_package_imports_without_detectron2():
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "import torch\n"
        "from clusterformer.modeling.backbone import clusterformer_nano\n"
        "out = clusterformer_nano()(torch.randn(1, 3, 32, 32))\n"
        "assert set(out) == {'res2', 'res3', 'res4', 'res5'}\n"
        "assert not any(m.startswith('detectron2.') for m in sys.modules)\n"
    )
    root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    )
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
