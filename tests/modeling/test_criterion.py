"""SetCriterion against straightforward re-computations from the definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from clusterformer.modeling.criterion import SetCriterion
from clusterformer.modeling.matcher import HungarianMatcher

K = 3


def _tiny_case():
    """2 images, 2 queries each; image 0 has 2 targets, image 1 has 1. Predictions at the target
    resolution so that the all-pixel mode involves no interpolation."""
    torch.manual_seed(0)
    H = W = 4
    masks0 = torch.zeros(2, H, W, dtype=torch.bool)
    masks0[0, :2] = True
    masks0[1, 2:, 2:] = True
    masks1 = torch.zeros(1, H, W, dtype=torch.bool)
    masks1[0, :, :1] = True
    targets = [
        {"labels": torch.tensor([2, 0]), "masks": masks0},
        {"labels": torch.tensor([1]), "masks": masks1},
    ]
    pred_masks = torch.randn(2, 2, H, W)
    # Make the matching unambiguous: image 0 query 1 <-> target 0, query 0 <-> target 1;
    # image 1 query 1 <-> target 0.
    pred_masks[0, 1] += 6 * (masks0[0].float() - 0.5)
    pred_masks[0, 0] += 6 * (masks0[1].float() - 0.5)
    pred_masks[1, 1] += 6 * (masks1[0].float() - 0.5)
    outputs = {"pred_logits": torch.randn(2, 2, K + 1), "pred_masks": pred_masks}
    matching = [{1: 0, 0: 1}, {1: 0}]
    return outputs, targets, matching


def _reference_losses(outputs, targets, matching, eos_coef):
    """Python-loop versions of the three losses on every pixel."""
    num_masks = sum(len(t["labels"]) for t in targets)
    weighted_nll, weight_sum = 0.0, 0.0
    bce_sum, dice_sum = 0.0, 0.0
    for b, target in enumerate(targets):
        for q in range(outputs["pred_logits"].shape[1]):
            log_probs = outputs["pred_logits"][b, q].log_softmax(-1)
            if q in matching[b]:
                t = matching[b][q]
                label, weight = int(target["labels"][t]), 1.0
                logits = outputs["pred_masks"][b, q].flatten()
                gt = target["masks"][t].flatten().float()
                per_pixel = [
                    -(
                        g * math.log(1 / (1 + math.exp(-z)))
                        + (1 - g) * math.log(1 - 1 / (1 + math.exp(-z)))
                    )
                    for z, g in zip(logits.tolist(), gt.tolist())
                ]
                bce_sum += sum(per_pixel) / len(per_pixel)
                probs = [1 / (1 + math.exp(-z)) for z in logits.tolist()]
                inter = sum(p * g for p, g in zip(probs, gt.tolist()))
                dice_sum += 1 - (2 * inter + 1) / (sum(probs) + sum(gt.tolist()) + 1)
            else:
                label, weight = K, eos_coef
            weighted_nll += -weight * log_probs[label].item()
            weight_sum += weight
    return {
        "loss_ce": weighted_nll / weight_sum,
        "loss_mask": bce_sum / num_masks,
        "loss_dice": dice_sum / num_masks,
    }


def _criterion(**kwargs):
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=kwargs.pop("matcher_points", 0))
    return SetCriterion(K, matcher, eos_coef=0.1, **kwargs)


def test_losses_equal_hand_computation_on_all_pixels():
    outputs, targets, matching = _tiny_case()
    criterion = _criterion(num_points=0)
    indices = criterion.matcher(outputs, targets)
    assert [dict(zip(r.tolist(), c.tolist())) for r, c in indices] == matching
    losses = criterion(outputs, targets)
    expected = _reference_losses(outputs, targets, matching, eos_coef=0.1)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    for key, value in expected.items():
        assert math.isclose(losses[key].item(), value, rel_tol=1e-5), key
    weighted = criterion.weight_losses(losses)
    assert torch.allclose(weighted["loss_ce"], 2.0 * losses["loss_ce"])
    assert torch.allclose(weighted["loss_dice"], 5.0 * losses["loss_dice"])


def test_point_losses_estimate_the_all_pixel_losses():
    outputs, targets, _ = _tiny_case()
    dense = _criterion(num_points=0)(outputs, targets)
    # Smooth (upsampled) predictions and targets: point reads approximate pixel values well.
    smooth = {
        "pred_logits": outputs["pred_logits"],
        "pred_masks": F.interpolate(
            outputs["pred_masks"], size=(128, 128), mode="bilinear", align_corners=False
        ),
    }
    smooth_targets = [
        {
            "labels": t["labels"],
            "masks": F.interpolate(t["masks"][None].float(), size=(128, 128), mode="nearest")[0],
        }
        for t in targets
    ]
    dense_smooth = _criterion(num_points=0)(smooth, smooth_targets)
    sampled = _criterion(num_points=20000, importance_sample_ratio=0.0)(
        smooth, smooth_targets, generator=torch.Generator().manual_seed(0)
    )
    assert math.isclose(sampled["loss_ce"].item(), dense["loss_ce"].item(), rel_tol=1e-6)
    # About 3% apart: points within half a pixel of the border read zero padding (as Mask2Former).
    for key in ("loss_mask", "loss_dice"):
        assert math.isclose(sampled[key].item(), dense_smooth[key].item(), rel_tol=0.05), key


def test_point_losses_deterministic_under_a_generator():
    outputs, targets, _ = _tiny_case()
    criterion = _criterion(num_points=50, matcher_points=50)
    a = criterion(outputs, targets, generator=torch.Generator().manual_seed(7))
    b = criterion(outputs, targets, generator=torch.Generator().manual_seed(7))
    c = criterion(outputs, targets, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["loss_mask"], c["loss_mask"])


def test_deep_supervision_suffixes_and_values():
    outputs, targets, _ = _tiny_case()
    aux = [
        {"pred_logits": torch.randn(2, 2, K + 1), "pred_masks": torch.randn(2, 2, 4, 4)}
        for _ in range(2)
    ]
    criterion = _criterion(num_points=0)
    losses = criterion({**outputs, "aux_outputs": aux}, targets)
    assert set(losses) == {
        f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")
    }
    alone = criterion(aux[1], targets)
    for key in ("loss_ce", "loss_mask", "loss_dice"):
        assert torch.allclose(losses[f"{key}_1"], alone[key])
    weighted = criterion.weight_losses(losses)
    assert torch.allclose(weighted["loss_mask_1"], 5.0 * losses["loss_mask_1"])
    no_aux = _criterion(num_points=0, deep_supervision=False)(
        {**outputs, "aux_outputs": aux}, targets
    )
    assert set(no_aux) == {"loss_ce", "loss_mask", "loss_dice"}
    with pytest.raises(KeyError, match="loss_foo"):
        criterion.weight_losses({"loss_foo": torch.tensor(1.0)})


def test_gradients_and_empty_targets():
    outputs, targets, _ = _tiny_case()
    outputs = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    losses = _criterion(num_points=30, matcher_points=30)(outputs, targets)
    sum(losses.values()).backward()
    assert (
        outputs["pred_masks"].grad.abs().sum() > 0 and outputs["pred_logits"].grad.abs().sum() > 0
    )
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 4, 4)}] * 2
    losses = _criterion(num_points=30, matcher_points=30)(outputs, empty)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    # Every query is "no object": plain CE towards class K.
    expected = F.cross_entropy(outputs["pred_logits"].reshape(-1, K + 1), torch.full((4,), K))
    assert torch.allclose(losses["loss_ce"], expected)


def test_box_and_focal_losses():
    outputs, targets, matching = _tiny_case()
    torch.manual_seed(1)
    outputs["pred_boxes"] = torch.cat(
        [torch.rand(2, 2, 2) * 0.5 + 0.25, torch.rand(2, 2, 2) * 0.3 + 0.1], -1
    )
    for t in targets:
        n = len(t["labels"])
        t["boxes"] = torch.cat([torch.rand(n, 2) * 0.5 + 0.25, torch.rand(n, 2) * 0.3 + 0.1], -1)
    criterion = _criterion(
        num_points=0, losses=("labels", "masks", "boxes"), class_loss="sigmoid_focal"
    )
    # The box costs are off in the matcher, so the mask-driven matching above still holds.
    losses = criterion(outputs, targets)
    ops = pytest.importorskip("torchvision.ops")
    l1, giou_sum = 0.0, 0.0
    for b, pairs in enumerate(matching):
        for q, t in pairs.items():
            src, tgt = outputs["pred_boxes"][b, q], targets[b]["boxes"][t]
            l1 += (src - tgt).abs().sum().item()
            giou = ops.generalized_box_iou(
                ops.box_convert(src[None], "cxcywh", "xyxy"),
                ops.box_convert(tgt[None], "cxcywh", "xyxy"),
            )
            giou_sum += 1 - giou.item()
    assert math.isclose(losses["loss_bbox"].item(), l1 / 3, rel_tol=1e-5)
    assert math.isclose(losses["loss_giou"].item(), giou_sum / 3, rel_tol=1e-5)
    one_hot = torch.zeros(2, 2, K)
    for b, pairs in enumerate(matching):
        for q, t in pairs.items():
            one_hot[b, q, targets[b]["labels"][t]] = 1
    focal = ops.sigmoid_focal_loss(
        outputs["pred_logits"][..., :K], one_hot, alpha=0.25, gamma=2.0, reduction="sum"
    )
    assert math.isclose(losses["loss_ce"].item(), focal.item() / 3, rel_tol=1e-5)


def test_rejects_mismatched_inputs():
    outputs, targets, _ = _tiny_case()
    with pytest.raises(ValueError, match="classes"):
        SetCriterion(K + 1, HungarianMatcher(num_points=0), num_points=0)(outputs, targets)
    bad = [
        targets[0],
        {"labels": torch.tensor([1]), "masks": torch.zeros(1, 5, 5, dtype=torch.bool)},
    ]
    with pytest.raises(ValueError, match="padded input size"):
        _criterion(num_points=10, matcher_points=10)(outputs, bad)
    with pytest.raises(ValueError, match="unknown losses"):
        _criterion(losses=("labels", "maskz"))


def test_mask_id_and_semantic_losses_equal_hand_computation():
    """kMaX-DeepLab's auxiliary losses: mask-id CE over queries at covered pixels (overlaps: the
    later target wins), semantic CE over classes; uncovered pixels ignored."""
    outputs, targets, matching = _tiny_case()
    targets[0]["masks"][1, 1, 3] = True  # overlaps target 0 at (1, 3): target 1 wins
    outputs["pred_semantic"] = torch.randn(2, K, 4, 4, requires_grad=True)
    outputs["pred_masks"].requires_grad_(True)
    criterion = _criterion(
        num_points=0, losses=("labels", "masks", "mask_id", "semantic"), deep_supervision=False
    )
    losses = criterion(outputs, targets)

    query_terms, class_terms = [], []
    for b, target in enumerate(targets):
        query_of_target = {t: q for q, t in matching[b].items()}
        for y in range(4):
            for x in range(4):
                covering = [t for t in range(len(target["labels"])) if target["masks"][t, y, x]]
                if not covering:
                    continue
                t = covering[-1]
                masks = outputs["pred_masks"][b, :, y, x]
                query_terms.append(-masks.log_softmax(0)[query_of_target[t]])
                sem = outputs["pred_semantic"][b, :, y, x]
                class_terms.append(-sem.log_softmax(0)[int(target["labels"][t])])
    assert torch.allclose(losses["loss_mask_id"], torch.stack(query_terms).mean(), atol=1e-6)
    assert torch.allclose(losses["loss_sem_seg"], torch.stack(class_terms).mean(), atol=1e-6)
    (losses["loss_mask_id"] + losses["loss_sem_seg"]).backward()
    assert outputs["pred_semantic"].grad.abs().sum() > 0
    assert outputs["pred_masks"].grad.abs().sum() > 0

    weighted = _criterion(
        num_points=0, losses=("labels", "mask_id"), mask_id_weight=0.5
    ).weight_losses({"loss_mask_id": torch.tensor(2.0)})
    assert float(weighted["loss_mask_id"]) == 1.0


def test_semantic_loss_needs_the_semantic_head_output():
    outputs, targets, _ = _tiny_case()
    with pytest.raises(KeyError, match="pred_semantic"):
        _criterion(num_points=0, losses=("labels", "semantic"))(outputs, targets)


def test_point_losses_equal_gathering_the_matched_masks():
    """The point losses read each target mask at its match's points in place; against the
    direct computation (gather the matched masks, sample them at the same points), with an
    image that has more targets than queries (some unmatched) and one without targets."""
    from clusterformer.modeling.criterion import dice_loss, sigmoid_ce_loss
    from clusterformer.modeling.point_sampling import (
        calculate_uncertainty,
        get_uncertain_point_coords_with_randomness,
        point_sample,
    )

    torch.manual_seed(0)
    Q, H, W = 3, 8, 8
    counts = (2, 5, 0)
    targets = [
        {"labels": torch.randint(0, K, (n,)), "masks": torch.rand(n, 2 * H, 2 * W) > 0.5}
        for n in counts
    ]
    outputs = {"pred_logits": torch.randn(3, Q, K + 1), "pred_masks": torch.randn(3, Q, H, W)}
    criterion = _criterion(num_points=40, deep_supervision=False)
    indices = [(torch.arange(min(Q, n)), torch.randperm(n)[:Q].sort().values) for n in counts]
    indices[1] = (torch.tensor([0, 1, 2]), torch.tensor([4, 0, 2]))

    got = criterion.loss_masks(outputs, targets, indices, 7.0, torch.Generator().manual_seed(5))

    src = torch.cat([outputs["pred_masks"][b, q] for b, (q, _) in enumerate(indices)])[:, None]
    tgt = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).float()[:, None]
    points = get_uncertain_point_coords_with_randomness(
        src, calculate_uncertainty, 40, 3.0, 0.75, torch.Generator().manual_seed(5)
    )
    src_points, tgt_points = point_sample(src, points)[:, 0], point_sample(tgt, points)[:, 0]
    assert torch.allclose(got["loss_mask"], sigmoid_ce_loss(src_points, tgt_points, 7.0))
    assert torch.allclose(got["loss_dice"], dice_loss(src_points, tgt_points, 7.0))
    assert tgt_points.min() < 1 and tgt_points.max() > 0  # the targets are not constant
