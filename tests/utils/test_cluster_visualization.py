"""Cluster overlays: colours per id, centroids, window borders, unassigned pixels."""

import numpy as np
import pytest

from clusterformer.utils.cluster_visualization import (
    boundaries,
    cluster_centroids,
    cluster_colors,
    render_cluster_overlay,
)


def test_colors_are_deterministic_and_distinct():
    colors = cluster_colors(np.arange(64))
    assert colors.shape == (64, 3) and colors.dtype == np.uint8
    assert np.array_equal(colors, cluster_colors(np.arange(64)))
    assert len({tuple(c) for c in colors}) == 64
    ids = np.array([[5, 5], [9, 5]])
    assert np.array_equal(cluster_colors(ids)[0, 0], cluster_colors(np.array([5]))[0])


def test_centroids_and_boundaries():
    ids = np.zeros((4, 6), np.int64)
    ids[:, 3:] = 1
    ids[0, 0] = -1
    centroids = cluster_centroids(ids)
    assert sorted(centroids) == [0, 1]
    assert centroids[1] == pytest.approx((4.0, 1.5))
    edge = boundaries(ids)
    assert edge[1, 2] and not edge[1, 3] and not edge[2, 0] and edge[0, 0]


def test_overlay_colours_assigned_pixels_and_dims_the_rest():
    image = np.full((40, 60, 3), 200, np.uint8)
    ids = np.zeros((40, 60), np.int64)
    ids[:, 30:] = 1
    ids[:5, :5] = -1
    out = render_cluster_overlay(image, ids, draw_centroids=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out[20, 10], out[20, 50])  # two clusters, two colours
    assert np.array_equal(out[1, 1], [80, 80, 80])  # unassigned: dimmed image
    windows = np.zeros((40, 60), np.int64)
    windows[20:] = 1
    with_windows = render_cluster_overlay(image, ids, windows=windows, draw_centroids=False)
    assert with_windows[19, 10].sum() > out[19, 10].sum()  # border lightened
    assert np.array_equal(with_windows[10, 10], out[10, 10])
    labelled = render_cluster_overlay(image, ids, labels={1: "circle"}, title="res2")
    assert not np.array_equal(labelled, out)


def test_overlay_checks_shapes():
    with pytest.raises(ValueError, match="size"):
        render_cluster_overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.int64))
    with pytest.raises(ValueError, match="windows"):
        render_cluster_overlay(
            np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64), windows=np.zeros((2, 2))
        )
