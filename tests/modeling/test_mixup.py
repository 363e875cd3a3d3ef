"""Mixup / CutMix targets and images."""

import pytest
import torch

from clusterformer.modeling.mixup import MixupCutmix, smooth_one_hot


def test_smooth_one_hot_values_and_sums():
    t = smooth_one_hot(torch.tensor([0, 2]), num_classes=4, smoothing=0.2)
    torch.testing.assert_close(t.sum(1), torch.ones(2))
    assert t[0, 0] == pytest.approx(0.8 + 0.05)
    assert t[0, 1] == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        smooth_one_hot(torch.tensor([4]), 4, 0.1)


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
    images = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    labels = torch.tensor([0, 1])
    mixer = MixupCutmix(0.8, 0.0, prob=1.0, switch_prob=0.5, label_smoothing=0.0, num_classes=2)
    mixed, targets = mixer(images, labels)
    lam = 1.0 - float(mixed[0].mean())  # image 0 (zeros) mixed with image 1 (ones)
    torch.testing.assert_close(targets[0], torch.tensor([lam, 1 - lam]))
    torch.testing.assert_close(targets.sum(1), torch.ones(2))


def test_cutmix_target_equals_pasted_area():
    torch.manual_seed(3)
    images = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    mixer = MixupCutmix(0.0, 1.0, prob=1.0, switch_prob=1.0, label_smoothing=0.0, num_classes=2)
    for _ in range(10):
        mixed, targets = mixer(images, torch.tensor([0, 1]))
        pasted_fraction = float(mixed[0].mean())  # ones pasted into the zeros image
        assert targets[0, 1] == pytest.approx(pasted_fraction, abs=1e-6)
        assert set(mixed.unique().tolist()) <= {0.0, 1.0}


def test_disabled_mixing_returns_inputs():
    images = torch.rand(2, 3, 8, 8)
    mixer = MixupCutmix(0.0, 0.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=3)
    out, targets = mixer(images, torch.tensor([1, 2]))
    assert out is images
    torch.testing.assert_close(targets, smooth_one_hot(torch.tensor([1, 2]), 3, 0.1))
