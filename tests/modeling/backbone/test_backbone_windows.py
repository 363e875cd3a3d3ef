"""Window geometry of the clustering mixer: partition, reverse, valid tokens, centre pooling."""

import pytest
import torch
import torch.nn.functional as F

from clusterformer.modeling.backbone.windows import (
    PointwiseConv2d,
    WindowGeometry,
    centre_pooling_weights,
    partition_windows,
    reverse_window_indices,
    reverse_windows,
    valid_token_mask,
)


@pytest.mark.parametrize(
    "size, window, expected",
    [
        ((14, 21), 7, (7, 7, 2, 3, False)),
        ((10, 12), 7, (7, 7, 2, 2, True)),
        ((3, 5), 7, (3, 5, 1, 1, False)),  # smaller than S: one window covering the map
        ((3, 9), 7, (3, 7, 1, 2, True)),
        ((1, 1), 7, (1, 1, 1, 1, False)),
    ],
)
def test_geometry(size, window, expected):
    g = WindowGeometry.for_map(*size, window)
    assert (g.window_h, g.window_w, g.windows_h, g.windows_w, g.has_padding) == expected


def test_partition_is_spatial_and_reverses():
    B, heads, d, H, W = 2, 3, 4, 10, 12
    g = WindowGeometry.for_map(H, W, 7)
    x = torch.randn(B, 2 * heads * d, H, W)
    windows = partition_windows(x, g, groups=2, heads=heads)
    assert windows.shape == (2, B, heads, g.num_windows, g.tokens_per_window, d)
    # Window (row 1, col 1) = index 3; its token (r, c) is pixel (7 + r, 7 + c), padded past 10x12.
    second = x[:, heads * d :].view(B, heads, d, H, W)
    win = windows[1, :, :, 3].view(B, heads, 7, 7, d)
    torch.testing.assert_close(win[:, :, :3, :5].permute(0, 1, 4, 2, 3), second[..., 7:, 7:])
    assert win[:, :, 3:].abs().sum() == 0 and win[:, :, :, 5:].abs().sum() == 0
    torch.testing.assert_close(reverse_windows(windows[1], g), x[:, heads * d :])
    ids = torch.arange(g.num_windows * g.tokens_per_window).view(1, 1, g.num_windows, -1)
    ids_map = reverse_window_indices(ids, g)
    assert ids_map.shape == (1, 1, H, W)
    assert ids_map[0, 0, 8, 9].item() == 3 * 49 + 1 * 7 + 2


@pytest.mark.parametrize("size", [(10, 12), (14, 21)])
def test_partition_and_reverse_agree_for_both_memory_formats(size):
    """The backbone feeds channels_last maps; the windows must not depend on the layout."""
    H, W = size
    g = WindowGeometry.for_map(H, W, 7)
    x = torch.randn(2, 3 * 2 * 4, H, W)
    nchw = partition_windows(x, g, groups=3, heads=2)
    nhwc = partition_windows(x.contiguous(memory_format=torch.channels_last), g, 3, 2)
    assert torch.equal(nchw, nhwc) and nhwc.is_contiguous()
    back = reverse_windows(nhwc[2], g)
    assert torch.equal(back, x[:, 16:])
    if not g.has_padding:
        assert back.is_contiguous(memory_format=torch.channels_last)


def test_pointwise_conv_is_a_1x1_convolution():
    torch.manual_seed(0)
    pointwise = PointwiseConv2d(6, 10)
    reference = torch.nn.Conv2d(6, 10, kernel_size=1)
    reference.load_state_dict(pointwise.state_dict())  # same parameters and keys
    for x in (
        torch.randn(2, 6, 5, 7),
        torch.randn(2, 6, 5, 7).to(memory_format=torch.channels_last),
    ):
        x.requires_grad_(True)
        out = pointwise(x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, reference(x))
        (grad_x,) = torch.autograd.grad(out.square().sum(), x)
        (grad_ref,) = torch.autograd.grad(reference(x).square().sum(), x)
        torch.testing.assert_close(grad_x, grad_ref)


def test_partition_rejects_wrong_map():
    g = WindowGeometry.for_map(10, 12, 7)
    with pytest.raises(ValueError, match="does not match"):
        partition_windows(torch.zeros(1, 6, 10, 13), g, groups=3, heads=1)


def test_valid_mask():
    g = WindowGeometry.for_map(10, 12, 7)
    valid = valid_token_mask(g, torch.device("cpu")).view(2, 2, 7, 7)
    assert valid[0, 0].all()
    assert valid[0, 1, :, :5].all() and not valid[0, 1, :, 5:].any()
    assert valid[1, 0, :3].all() and not valid[1, 0, 3:].any()
    assert valid.sum() == 10 * 12
    assert valid_token_mask(WindowGeometry.for_map(14, 7, 7), torch.device("cpu")) is None


@pytest.mark.parametrize(
    "size, window, bins",
    [((10, 12), 7, 2), ((9, 16), 7, 3), ((3, 5), 7, 2), ((14, 14), 7, 10), ((8, 13), 4, 3)],
)
def test_centre_pooling_matches_adaptive_avg_pool_on_valid_tokens(size, window, bins):
    H, W = size
    g = WindowGeometry.for_map(H, W, window)
    weights = centre_pooling_weights(g, bins, torch.device("cpu"), torch.float64)
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    tokens = partition_windows(x, g, groups=1, heads=1)[0, 0, 0]  # (nW, N, 3)
    pooled = torch.matmul(weights, tokens)  # (nW, K, 3)
    for wi in range(g.windows_h):
        for wj in range(g.windows_w):
            r0, c0 = wi * g.window_h, wj * g.window_w
            crop = x[0, :, r0 : r0 + g.window_h, c0 : c0 + g.window_w]
            expected = F.adaptive_avg_pool2d(crop, bins).reshape(3, bins * bins).T
            torch.testing.assert_close(pooled[wi * g.windows_w + wj], expected)
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
