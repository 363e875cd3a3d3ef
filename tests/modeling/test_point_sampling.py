"""point_sample and uncertainty-based importance sampling."""

import torch

from clusterformer.modeling.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)


def test_point_sample_reads_pixel_centres_and_interpolates():
    image = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    # Pixel (row 1, col 2) has its centre at ((2 + 0.5) / 4, (1 + 0.5) / 3).
    centre = torch.tensor([[[2.5 / 4, 1.5 / 3]]])
    assert torch.allclose(point_sample(image, centre), torch.tensor([[[6.0]]]))
    # Halfway between columns 0 and 1 of row 0.
    between = torch.tensor([[[1.0 / 4, 0.5 / 3]]])
    assert torch.allclose(point_sample(image, between), torch.tensor([[[0.5]]]))
    grid = torch.rand(1, 2, 5, 2)
    assert point_sample(image, grid).shape == (1, 1, 2, 5)


def test_sampling_is_deterministic_under_a_generator():
    logits = torch.randn(3, 1, 8, 8)
    args = (logits, calculate_uncertainty, 50, 3.0, 0.75)
    a = get_uncertain_point_coords_with_randomness(
        *args, generator=torch.Generator().manual_seed(5)
    )
    b = get_uncertain_point_coords_with_randomness(
        *args, generator=torch.Generator().manual_seed(5)
    )
    c = get_uncertain_point_coords_with_randomness(
        *args, generator=torch.Generator().manual_seed(6)
    )
    assert a.shape == (3, 50, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_importance_sampling_picks_the_most_uncertain_candidates():
    # The decision boundary is the vertical line x = 0.3: uncertainty grows towards it.
    xs = (torch.arange(64) + 0.5) / 64
    logits = (20 * (xs - 0.3)).view(1, 1, 1, 64).expand(2, 1, 64, 64).contiguous()
    num_points, oversample = 40, 4.0
    points = get_uncertain_point_coords_with_randomness(
        logits,
        calculate_uncertainty,
        num_points,
        oversample,
        0.75,
        generator=torch.Generator().manual_seed(1),
    )
    # Re-draw the candidates the function drew first and rank them independently.
    candidates = torch.rand(
        2, int(num_points * oversample), 2, generator=torch.Generator().manual_seed(1)
    )
    candidate_uncertainty = calculate_uncertainty(point_sample(logits, candidates))[:, 0]
    num_important = 30
    for i in range(2):
        chosen = points[i, :num_important]
        expected = candidates[i, candidate_uncertainty[i].topk(num_important).indices]
        assert torch.equal(chosen[chosen[:, 0].argsort()], expected[expected[:, 0].argsort()]), (
            "importance points must be the most uncertain candidates"
        )
        # Independent of the draw: they are closer to the boundary than the rejected candidates.
        chosen_unc = calculate_uncertainty(point_sample(logits[i : i + 1], chosen[None]))[0, 0]
        kept = set(map(tuple, chosen.tolist()))
        rejected = torch.tensor([c for c in candidates[i].tolist() if tuple(c) not in kept])
        rejected_unc = calculate_uncertainty(point_sample(logits[i : i + 1], rejected[None]))[0, 0]
        assert chosen_unc.min() >= rejected_unc.max()
    assert points.shape == (2, num_points, 2)
    assert bool(((points >= 0) & (points <= 1)).all())
