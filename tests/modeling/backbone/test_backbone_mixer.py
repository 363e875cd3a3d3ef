"""The clustering token mixer against hand-written references (loops over windows and heads)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from clusterformer.modeling.backbone import (
    ClusteringMixer,
    FeatureDispatch,
    RecurrentClusteringAttention,
    default_clustering_settings,
)

FLAG_GRID = list(
    itertools.product(
        ("none", "inv_sqrt_dim"), ("mean", "sum"), ("clusters", "tokens"), ("soft", "hard")
    )
)


def test_default_clustering_settings_are_the_papers():
    # docs/method.md §1: T = 3, 2 x 2 centres per 7 x 7 window, no temperature, mean M-step,
    # softmax over the clusters, soft dispatch (Eq. 6).
    assert default_clustering_settings() == {
        "window_size": 7,
        "centres_per_window": 2,
        "iterations": 3,
        "temperature": "none",
        "mstep_normalization": "mean",
        "assignment_softmax": "clusters",
        "dispatch": "soft",
    }


def make_mixer(dim=8, heads=2, head_dim=4, window=7, k=2, iterations=3, **flags):
    geometry = {"window_size": window, "centres_per_window": k, "iterations": iterations}
    mixer = ClusteringMixer(
        dim,
        num_heads=heads,
        head_dim=head_dim,
        **{**default_clustering_settings(), **geometry, **flags},
    )
    # A non-identity centre map and non-default dispatch parameters exercise every term.
    with torch.no_grad():
        mixer.clustering.centre_proj.weight.add_(0.3 * torch.randn(head_dim, head_dim))
        mixer.clustering.centre_proj.bias.normal_(0, 0.1)
        mixer.dispatch.alpha.fill_(1.7)
        mixer.dispatch.beta.fill_(-0.2)
    return mixer


def reference_mixer(mixer: ClusteringMixer, x: torch.Tensor):
    """Straightforward per-(sample, head, window) implementation of the documented math.

    Each window is cut from the map and cropped to its real pixels (no padding at all); centres
    are initialised with F.adaptive_avg_pool2d of that crop.
    Returns the output and {(b, head, r0, c0): [A_1 .. A_T]}.
    """
    B, _, H, W = x.shape
    heads, d, S, k = mixer.num_heads, mixer.head_dim, mixer.window_size, mixer.centres_per_window
    clustering, dispatch = mixer.clustering, mixer.dispatch
    inner = heads * d
    qkv = mixer.qkv(x)
    q_map, k_map, v_map = qkv[:, :inner], qkv[:, inner : 2 * inner], qkv[:, 2 * inner :]
    wh, ww = min(S, H), min(S, W)
    out = torch.zeros(B, inner, H, W, dtype=x.dtype)
    assignments = {}
    for b, head, r0, c0 in itertools.product(
        range(B), range(heads), range(0, H, wh), range(0, W, ww)
    ):
        ch = slice(head * d, (head + 1) * d)
        rows, cols = slice(r0, r0 + wh), slice(c0, c0 + ww)
        q_win = q_map[b, ch, rows, cols]
        vh, vw = q_win.shape[-2:]
        points = q_win.reshape(d, -1).T
        keys = k_map[b, ch, rows, cols].reshape(d, -1).T
        values = v_map[b, ch, rows, cols].reshape(d, -1).T
        centres = F.adaptive_avg_pool2d(q_win, k).reshape(d, k * k).T
        history = []
        for _ in range(clustering.iterations):
            logits = (
                F.linear(centres, clustering.centre_proj.weight, clustering.centre_proj.bias)
                @ keys.T
            )
            if clustering.temperature == "inv_sqrt_dim":
                logits = logits / math.sqrt(d)
            axis = 0 if clustering.assignment_softmax == "clusters" else 1
            A = logits.softmax(dim=axis)
            centres = A @ values
            if clustering.mstep_normalization == "mean":
                centres = centres / A.sum(dim=1, keepdim=True)
            history.append(A)
        assignments[(b, head, r0, c0)] = history
        cosine = F.cosine_similarity(centres[:, None, :], points[None, :, :], dim=-1)
        sim = torch.sigmoid(dispatch.beta + dispatch.alpha * cosine)  # (K, n)
        if dispatch.mode == "soft":
            mixed = sim.T @ centres / (k * k)
            tokens = F.gelu(
                F.linear(mixed, dispatch.dispatch_proj.weight, dispatch.dispatch_proj.bias)
            )
        else:
            owner = sim.argmax(dim=0)
            tokens = torch.zeros_like(points)
            for i in range(points.shape[0]):
                c = owner[i]
                members = owner == c
                message = centres[c] + (sim[c, members, None] * values[members]).sum(0)
                message = message / (1 + members.sum())
                tokens[i] = sim[c, i] * message
        out[b, ch, r0 : r0 + vh, c0 : c0 + vw] = tokens.T.reshape(d, vh, vw)
    return mixer.proj(out), assignments


@pytest.mark.parametrize("temperature, mstep, axis, dispatch", FLAG_GRID)
def test_mixer_matches_reference_for_all_flags(temperature, mstep, axis, dispatch):
    mixer = make_mixer(
        temperature=temperature,
        mstep_normalization=mstep,
        assignment_softmax=axis,
        dispatch=dispatch,
    ).double()
    x = torch.randn(2, 8, 10, 12, dtype=torch.float64)  # padded windows on the bottom and right
    expected, _ = reference_mixer(mixer, x)
    torch.testing.assert_close(mixer(x), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    "size, window, k, iterations",
    [
        ((14, 21), 7, 2, 3),
        ((3, 5), 7, 2, 2),
        ((9, 16), 7, 3, 1),
        ((7, 7), 7, 1, 3),
        ((10, 12), 4, 3, 2),
        ((14, 14), 7, 10, 2),
    ],
)
@pytest.mark.parametrize("dispatch", ["soft", "hard"])
def test_mixer_matches_reference_for_geometries(size, window, k, iterations, dispatch):
    mixer = make_mixer(window=window, k=k, iterations=iterations, dispatch=dispatch).double()
    x = torch.randn(1, 8, *size, dtype=torch.float64)
    expected, _ = reference_mixer(mixer, x)
    torch.testing.assert_close(mixer(x), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("axis", ["clusters", "tokens"])
@pytest.mark.parametrize("iterations", [1, 3])
def test_assignment_mass(axis, iterations):
    mixer = make_mixer(heads=3, assignment_softmax=axis, iterations=iterations)
    captured = {}
    mixer.clustering.register_forward_hook(
        lambda m, args, out: captured.update(inputs=args, out=out)
    )
    mixer(torch.randn(2, 8, 10, 12))
    valid = captured["inputs"][3]  # (num_windows, tokens)
    assert valid is not None and valid.shape == (4, 49) and valid.sum() == 120
    assignments = captured["out"][1]
    assert len(assignments) == iterations
    for A in assignments:  # (B, heads, windows, K, N)
        assert A.shape == (2, 3, 4, 4, 49)
        assert torch.all(A >= 0)
        per_window = A.transpose(-3, -2)  # (B, heads, K, windows, N), to index by the mask
        assert torch.all(per_window[..., ~valid] == 0), "padded tokens must carry no mass"
        assert torch.all(per_window[..., valid] > 0)
        if axis == "clusters":
            torch.testing.assert_close(A.sum(dim=-2), valid.float().expand(2, 3, 4, 49))
        else:
            torch.testing.assert_close(A.sum(dim=-1), torch.ones(2, 3, 4, 4))


@pytest.mark.parametrize("dispatch", ["soft", "hard"])
@pytest.mark.parametrize(
    "size, window_rows, window_cols", [((14, 21), (7, 14), (7, 14)), ((10, 12), (7, 10), (0, 7))]
)
def test_windows_are_spatial(dispatch, size, window_rows, window_cols):
    mixer = make_mixer(dispatch=dispatch).double()
    x = torch.randn(1, 8, *size, dtype=torch.float64)
    y = x.clone()
    (r0, r1), (c0, c1) = window_rows, window_cols
    y[..., r0 + 1 : r1 - 1, c0 + 2 : c1] += torch.randn_like(y[..., r0 + 1 : r1 - 1, c0 + 2 : c1])
    changed = (mixer(x) - mixer(y)).abs().amax(dim=(0, 1)) > 1e-12
    inside = torch.zeros(size, dtype=torch.bool)
    inside[r0:r1, c0:c1] = True
    assert changed[inside].any()
    assert not changed[~inside].any(), "a change inside one window leaked into other windows"


def test_e_and_m_step_by_hand():
    """T = 1 on two centres and three tokens, d = 2, W_c = identity."""
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    e = math.e
    a, b = e / (1 + e), 1 / (1 + e)  # softmax over the clusters of logits [[1, 0, 1], [0, 1, 1]]
    A = torch.tensor([[a, b, 0.5], [b, a, 0.5]], dtype=torch.float64)
    raw = A @ values

    def run(**flags):
        module = RecurrentClusteringAttention(2, iterations=1, **flags).double()
        return module(centres, keys, values)

    c_sum, (A_sum,) = run(mstep_normalization="sum")
    torch.testing.assert_close(A_sum, A)
    torch.testing.assert_close(c_sum, raw)
    c_mean, _ = run(mstep_normalization="mean")
    torch.testing.assert_close(c_mean, raw / 1.5)  # each row of A sums to a + b + 0.5 = 1.5
    # Temperature 1/sqrt(d): logits [[1, 0, 1], [0, 1, 1]] / sqrt(2).
    s = 1 / math.sqrt(2)
    a2, b2 = math.exp(s) / (math.exp(s) + 1), 1 / (math.exp(s) + 1)
    _, (A_t,) = run(temperature="inv_sqrt_dim")
    torch.testing.assert_close(
        A_t, torch.tensor([[a2, b2, 0.5], [b2, a2, 0.5]], dtype=torch.float64)
    )
    # Softmax over tokens: each centre's row sums to 1; "mean" then equals "sum".
    A_rows = torch.tensor([[e, 1.0, e], [1.0, e, e]], dtype=torch.float64) / (2 * e + 1)
    c_tok, (A_tok,) = run(assignment_softmax="tokens")
    torch.testing.assert_close(A_tok, A_rows)
    torch.testing.assert_close(c_tok, A_tok @ values)


def test_dispatch_by_hand():
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    points = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.5]], dtype=torch.float64)
    values = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    sig = torch.sigmoid
    c2 = torch.tensor(1 / math.sqrt(1.25), dtype=torch.float64)  # cos of point 2 with centre 0
    s = torch.stack(
        [
            torch.stack([sig(torch.tensor(1.0)), sig(torch.tensor(0.0)), sig(c2)]).double(),
            torch.stack([sig(torch.tensor(0.0)), sig(torch.tensor(1.0)), sig(c2 / 2)]).double(),
        ]
    )  # (K, N)

    hard = FeatureDispatch(2, mode="hard").double()
    torch.testing.assert_close(hard.similarity(centres, points), s)
    # Clusters: {0, 2} -> centre 0, {1} -> centre 1.
    g0 = (centres[0] + s[0, 0] * values[0] + s[0, 2] * values[2]) / 3
    g1 = (centres[1] + s[1, 1] * values[1]) / 2
    expected_hard = torch.stack([s[0, 0] * g0, s[1, 1] * g1, s[0, 2] * g0])
    torch.testing.assert_close(hard(centres, points, values), expected_hard)
    # A padded token 2 joins no cluster: centre 0's message loses it.
    valid = torch.tensor([True, True, False])
    g0_valid = (centres[0] + s[0, 0] * values[0]) / 2
    torch.testing.assert_close(hard(centres, points, values, valid)[0], s[0, 0] * g0_valid)

    soft = FeatureDispatch(2, mode="soft").double()
    with torch.no_grad():
        soft.dispatch_proj.weight.copy_(torch.eye(2))
        soft.dispatch_proj.bias.zero_()
    mixed = (s.T @ centres) / 2  # mean over the two centres of S_k * C_k
    torch.testing.assert_close(soft(centres, points, values), F.gelu(mixed))


def test_clustering_runs_in_fp32_under_autocast():
    torch.manual_seed(1)
    mixer = make_mixer(dim=16, heads=2, head_dim=8)
    captured = {}

    def keep(module, args, out):
        captured["args"], captured["out"] = args, out

    mixer.clustering.register_forward_hook(keep)
    x = torch.randn(2, 16, 10, 12)
    reference = mixer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = mixer(x)
    centres_in, keys, values, valid = captured["args"]
    centres_out, assignments = captured["out"]
    assert keys.dtype == values.dtype == centres_in.dtype == torch.float32
    assert centres_out.dtype == torch.float32 and all(A.dtype == torch.float32 for A in assignments)
    # Given the same (bf16-rounded) inputs, the clustering under autocast equals the fp32 path.
    again, again_assignments = mixer.clustering(centres_in, keys, values, valid)
    torch.testing.assert_close(again, centres_out, rtol=0, atol=0)
    torch.testing.assert_close(again_assignments[-1], assignments[-1], rtol=0, atol=0)
    # End to end only the 1x1 projections run in bf16: a bf16-sized error, no more.
    assert mixed.dtype == torch.bfloat16
    error = (mixed.float() - reference).abs().max() / reference.abs().max()
    assert error < 2e-2, f"autocast mixer differs from fp32 by {error:.3g} (relative to max |y|)"


@pytest.mark.parametrize("axis", ["clusters", "tokens"])
def test_returned_cluster_index_map(axis):
    mixer = make_mixer(assignment_softmax=axis)
    captured = {}
    mixer.clustering.register_forward_hook(lambda m, args, out: captured.update(out=out))
    # Off (the default): the output alone, and nothing kept on the module.
    assert isinstance(mixer(torch.randn(1, 8, 10, 12)), torch.Tensor)
    assert not hasattr(mixer, "last_assignment")
    x = torch.randn(2, 8, 10, 12)
    out, ids = mixer(x, return_cluster_ids=True)
    assert torch.equal(out, mixer(x))
    assert ids.shape == (2, 2, 10, 12) and ids.dtype == torch.int64
    A = captured["out"][1][-1]  # (B, heads, windows, K, N)
    # Pixel (8, 9) lies in window 3 (row 1, col 1) at token 1 * 7 + 2.
    assert ids[1, 1, 8, 9].item() == 3 * 4 + A[1, 1, 3, :, 7 + 2].argmax().item()
    # Ids of a window stay in that window's range.
    assert ids[:, :, :7, :7].max() < 4 and ids[:, :, 7:, 7:].min() >= 12


def test_invalid_flags_raise():
    for bad in (
        {"temperature": "sqrt"},
        {"mstep_normalization": "median"},
        {"assignment_softmax": "rows"},
        {"dispatch": "medium"},
        {"iterations": 0},
        {"k": 0},
    ):
        with pytest.raises(ValueError):
            make_mixer(**bad)
