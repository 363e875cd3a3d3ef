"""The non-clustering baseline mixer: Swin-style self-attention in the clustering windows."""

import pytest
import torch

from clusterformer.modeling.backbone import ClusterFormerBackbone, WindowAttentionMixer


def reference_window_attention(mixer, x):
    """Straightforward per-window, per-head loop (float64), padding excluded by construction."""
    B, C, H, W = x.shape
    S = mixer.window_size
    qkv = mixer.qkv(x)
    heads = mixer.num_heads
    d = qkv.shape[1] // (3 * heads)
    out = torch.zeros(B, heads * d, H, W, dtype=x.dtype)
    for top in range(0, H, min(S, H)):
        for left in range(0, W, min(S, W)):
            win = qkv[:, :, top : top + S, left : left + S]
            h, w = win.shape[-2:]
            q, k, v = win.reshape(B, 3, heads, d, h * w).unbind(1)
            attn = (torch.einsum("bhdn,bhdm->bhnm", q, k) * d**-0.5).softmax(-1)
            tokens = torch.einsum("bhnm,bhdm->bhdn", attn, v)
            out[:, :, top : top + h, left : left + w] = tokens.reshape(B, heads * d, h, w)
    return mixer.proj(out)


@pytest.mark.parametrize("size", [(7, 7), (9, 11), (4, 5), (14, 20)])
def test_matches_the_per_window_reference(size):
    torch.manual_seed(0)
    mixer = WindowAttentionMixer(16, num_heads=2, head_dim=8, window_size=7).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), reference_window_attention(mixer, x))


def test_windows_are_spatial():
    torch.manual_seed(0)
    mixer = WindowAttentionMixer(8, num_heads=1, head_dim=8, window_size=4)
    x = torch.randn(1, 8, 8, 8)
    y = x.clone()
    y[..., :4, :4] += torch.randn(1, 8, 4, 4)  # change the top-left window only
    changed = (mixer(x) - mixer(y)).abs().sum(1)[0] > 1e-6
    assert changed[:4, :4].all() and not changed[4:].any() and not changed[:, 4:].any()


def test_backbone_with_window_attention_trains_every_parameter():
    model = ClusterFormerBackbone(
        embed_dims=(16, 32, 32, 32),
        depths=(1, 1, 1, 1),
        mlp_ratios=(2, 2, 2, 2),
        head_dim=8,
        mixer="window_attention",
    )
    out = model(torch.randn(2, 3, 40, 56))
    assert out["res5"].shape == (2, 32, 2, 2)
    sum(v.mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not any(
        isinstance(m, torch.nn.Module) and "Clustering" in type(m).__name__ for m in model.modules()
    )
    with pytest.raises(ValueError, match="mixer must be one of"):
        ClusterFormerBackbone(mixer="pooling")
