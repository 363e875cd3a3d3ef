"""The clustering primitive (E-step, M-step) against naive loops: both softmax axes, exclusions,
normalisations, gradients, and fp32 under bf16 autocast."""

import itertools
import math

import pytest
import torch

from clusterformer.modeling.clustering import append_mass_column, e_step, m_step

B, M, K, N, D = 2, 3, 4, 6, 5


def _naive_e_step(queries, keys, scale, softmax_over, excluded=None, valid=None):
    """Entry-by-entry: logits, then a softmax over the allowed entries of each slice (uniform
    over the whole slice when it has none); invalid tokens weigh 0 in every centre."""
    b_, m_, k_, n_ = queries.shape[0], queries.shape[1], queries.shape[2], keys.shape[2]
    if excluded is None:
        excluded = torch.zeros(b_, m_, k_, n_, dtype=torch.bool)
    if valid is None:
        valid = torch.ones(b_, m_, 1, n_, dtype=torch.bool)
    excluded = excluded.expand(b_, m_, k_, n_)
    valid = valid.expand(b_, m_, 1, n_)
    out = torch.zeros(b_, m_, k_, n_, dtype=torch.float64)
    for b, m in itertools.product(range(b_), range(m_)):
        logit = [
            [
                scale * sum(queries[b, m, k, i] * keys[b, m, n, i] for i in range(D))
                for n in range(n_)
            ]
            for k in range(k_)
        ]
        if softmax_over == "clusters":
            slices = [[(k, n) for k in range(k_)] for n in range(n_)]
        else:
            slices = [[(k, n) for n in range(n_)] for k in range(k_)]
        for entries in slices:
            allowed = [(k, n) for k, n in entries if not excluded[b, m, k, n]]
            if softmax_over == "tokens":
                allowed = [(k, n) for k, n in allowed if valid[b, m, 0, n]]
            if not allowed:  # nothing allowed: uniform over the slice
                for k, n in entries:
                    out[b, m, k, n] = 1 / len(entries)
                continue
            top = max(float(logit[k][n]) for k, n in allowed)
            total = sum(math.exp(float(logit[k][n]) - top) for k, n in allowed)
            for k, n in allowed:
                out[b, m, k, n] = math.exp(float(logit[k][n]) - top) / total
    if softmax_over == "clusters":
        out = out * valid
    return out


def _naive_m_step(assignment, values, normalization, weights=None, eps=1e-6):
    """``sum_n A[k, n] w_n v_n``, divided by ``max(sum_n A[k, n] w_n, eps)`` for "mean"."""
    b_, m_, k_, n_ = assignment.shape
    out = torch.zeros(b_, m_, k_, values.shape[-1], dtype=torch.float64)
    for b, m, k in itertools.product(range(b_), range(m_), range(k_)):
        w = [1.0 if weights is None else float(weights[b, 0, n, 0]) for n in range(n_)]
        total = sum(float(assignment[b, m, k, n]) * w[n] * values[b, m, n] for n in range(n_))
        mass = sum(float(assignment[b, m, k, n]) * w[n] for n in range(n_))
        out[b, m, k] = total / max(mass, eps) if normalization == "mean" else total
    return out


def _inputs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(B, M, K, D, generator=g, dtype=dtype)
    keys = torch.randn(B, M, N, D, generator=g, dtype=dtype)
    values = torch.randn(B, M, N, D, generator=g, dtype=dtype)
    excluded = torch.rand(B, 1, K, N, generator=g) > 0.6
    excluded[0, :, :, 2] = True  # a token every centre excludes
    excluded[1, :, 1] = True  # a centre that excludes every token
    valid = torch.ones(B, 1, 1, N, dtype=torch.bool)
    valid[:, ..., -1] = False  # a padded token
    return queries, keys, values, excluded, valid


@pytest.mark.parametrize("softmax_over", ["clusters", "tokens"])
@pytest.mark.parametrize("scale", [1.0, 0.4])
@pytest.mark.parametrize("masks", ["none", "excluded", "valid", "both"])
def test_e_step_matches_naive_loops(softmax_over, scale, masks):
    queries, keys, _, excluded, valid = _inputs()
    excluded = excluded if masks in ("excluded", "both") else None
    valid = valid if masks in ("valid", "both") else None
    got = e_step(queries, keys.transpose(-2, -1), scale, softmax_over, excluded, valid)
    expected = _naive_e_step(queries, keys, scale, softmax_over, excluded, valid)
    assert got.dtype == torch.float64 and got.shape == (B, M, K, N)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("normalization", ["mean", "sum"])
@pytest.mark.parametrize("token_weights", [False, True])
def test_m_step_matches_naive_loops(normalization, token_weights):
    queries, keys, values, excluded, _ = _inputs(seed=1)
    assignment = e_step(queries, keys.transpose(-2, -1), 0.5, "clusters", excluded)
    assignment[0, 0, 3] = 0.0  # an empty cluster: guarded, not divided by zero
    expected = _naive_m_step(assignment, values, normalization)
    torch.testing.assert_close(m_step(assignment, values, normalization), expected)
    weights = None
    if token_weights:
        weights = torch.ones(B, 1, N, 1, dtype=torch.float64)
        weights[0, 0, 2] = 0.0  # a token no centre may take: out of the update
    extended = append_mass_column(values, weights)
    assert extended.shape == (B, M, N, D + 1)
    got = m_step(assignment, extended, normalization, mass_column=True)
    torch.testing.assert_close(got, _naive_m_step(assignment, values, normalization, weights))
    assert torch.isfinite(got).all() and (got[0, 0, 3] == 0).all()


def test_cluster_means_are_weighted_means_with_empty_guard():
    assign = torch.tensor([[[[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.0, 0.6]]]])
    values = torch.tensor([[[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]])
    means = m_step(assign, values)
    expected = torch.tensor([[[[2.0, 3.0], [0.0, 0.0], [(0.2 + 3.0) / 0.8, (0.4 + 3.6) / 0.8]]]])
    assert torch.allclose(means, expected)


def test_exclusions_get_zero_weight_and_fully_excluded_slices_stay_finite():
    queries, keys, _, excluded, valid = _inputs(seed=2)
    queries.requires_grad_(True)
    keys_t = keys.transpose(-2, -1)
    # Cluster axis: excluded entries weigh exactly 0 wherever the token keeps a centre.
    A = e_step(queries, keys_t, 0.5, "clusters", excluded)
    keeps = ~excluded.all(dim=2, keepdim=True)  # (B, 1, 1, N)
    assert (A[(excluded & keeps).expand_as(A)] == 0).all()
    mass = A.sum(2)[keeps[:, :, 0].expand(B, M, N)]
    torch.testing.assert_close(mass, torch.ones_like(mass))
    # A token every centre excludes: uniform over the centres (finite, not NaN) ...
    torch.testing.assert_close(A[0, :, :, 2], torch.full((M, K), 1 / K, dtype=torch.float64))
    A.square().sum().backward()
    assert torch.isfinite(queries.grad).all()
    # ... and zero once it is marked not valid.
    dropped = valid & keeps
    A_valid = e_step(queries, keys_t, 0.5, "clusters", excluded, dropped)
    assert (A_valid[0, :, :, 2] == 0).all() and (A_valid[..., -1] == 0).all()
    assert torch.equal(A_valid[dropped.expand_as(A)], A[dropped.expand_as(A)])
    # Token axis: padded tokens are excluded too; a centre that excludes every token is uniform
    # over the tokens (finite, not NaN), every other centre's weights sum to 1 over the rest.
    A_tok = e_step(queries, keys_t, 0.5, "tokens", excluded, valid)
    torch.testing.assert_close(A_tok[1, :, 1], torch.full((M, N), 1 / N, dtype=torch.float64))
    out = (excluded | ~valid).expand_as(A_tok)
    full_row = out.all(dim=-1, keepdim=True).expand_as(A_tok)
    assert full_row.any() and (A_tok[out & ~full_row] == 0).all()
    torch.testing.assert_close(A_tok.sum(-1), torch.ones(B, M, K, dtype=torch.float64))


def test_restricted_assignment_softmax_over_queries_and_masking_rule():
    """The decoder's use: a restriction ``allowed`` (B, Q, N) excludes (query, pixel) pairs; a
    pixel no query allows is dropped."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=g).requires_grad_(True)
    k = torch.randn(2, 4, 15, 8, generator=g)
    allowed = torch.rand(2, 6, 15, generator=g) > 0.5
    allowed[0, :, 3] = False  # a pixel excluded by every query
    allowed[1, 2] = False  # a query that excludes every pixel
    assign = e_step(
        q, k.transpose(-2, -1), 0.5, "clusters", ~allowed[:, None], allowed.any(1)[:, None, None]
    )
    column_mass = assign.sum(dim=2)  # (B, M, N)
    some_query = allowed.any(dim=1)[:, None].expand_as(column_mass)
    assert torch.allclose(column_mass[some_query], torch.ones(()), atol=1e-6)
    assert (column_mass[~some_query] == 0).all() and (~some_query).any()
    assert (assign[~allowed[:, None].expand_as(assign)] == 0).all()
    # Gradients stay finite through fully excluded pixels.
    assign.square().sum().backward()
    assert torch.isfinite(q.grad).all()
    # Unrestricted: a plain softmax over the query axis.
    free = e_step(q, k.transpose(-2, -1), 0.5)
    assert torch.allclose(free, (torch.einsum("bmqd,bmnd->bmqn", q, k) * 0.5).softmax(dim=2))


@pytest.mark.parametrize("softmax_over", ["clusters", "tokens"])
def test_gradients_in_float64(softmax_over):
    queries, keys, values, excluded, valid = _inputs(seed=3)
    excluded[0, :, :, 2] = False  # gradcheck through allowed entries; exclusions stay partial
    weights = valid[:, 0, 0, :, None].double()  # (B, N, 1) -> broadcast as (B, 1, N, 1)

    def clustering(queries, keys, values):
        A = e_step(queries, keys.transpose(-2, -1), 0.7, softmax_over, excluded, valid)
        means = m_step(A, values, "mean")
        fused = m_step(A, append_mass_column(values, weights[:, None]), "mean", mass_column=True)
        return A, means, fused, m_step(A, values, "sum")

    inputs = tuple(t.clone().requires_grad_(True) for t in (queries, keys, values))
    assert torch.autograd.gradcheck(clustering, inputs, fast_mode=True)


@pytest.mark.parametrize("softmax_over", ["clusters", "tokens"])
def test_fp32_under_bfloat16_autocast(softmax_over):
    queries, keys, values, excluded, valid = _inputs(seed=4, dtype=torch.float32)
    q16, k16, v16 = (t.bfloat16() for t in (queries, keys, values))
    reference_A = e_step(
        q16.float(), k16.float().transpose(-2, -1), 0.3, softmax_over, excluded, valid
    )
    reference_C = m_step(reference_A, v16.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        A = e_step(q16, k16.transpose(-2, -1), 0.3, softmax_over, excluded, valid)
        C = m_step(A, v16)
        # fp32 inputs are not cast down either.
        A32 = e_step(queries, keys.transpose(-2, -1), 0.3, softmax_over, excluded, valid)
    assert A.dtype == C.dtype == A32.dtype == torch.float32
    assert torch.equal(A, reference_A) and torch.equal(C, reference_C)
    assert torch.equal(
        A32, e_step(queries, keys.transpose(-2, -1), 0.3, softmax_over, excluded, valid)
    )


def test_rejects_unknown_choices():
    queries, keys, values, _, _ = _inputs()
    with pytest.raises(ValueError, match="softmax_over"):
        e_step(queries, keys.transpose(-2, -1), softmax_over="centres")
    with pytest.raises(ValueError, match="normalization"):
        m_step(torch.ones(B, M, K, N, dtype=torch.float64), values, "median")
