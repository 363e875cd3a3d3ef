"""TorchScript / ONNX export of the model core (clusterformer.deploy, no detectron2): the exports
compute the eager model's raw outputs (max abs difference <= 1e-4 in fp32), run at their traced
size only (a clear error elsewhere), and the deformable attention is traced as its PyTorch
reference. ONNX export with torch 2.3's exporter takes ~15 s for these small models."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clusterformer.deploy import ExportedModel, eager_outputs, export
from clusterformer.deploy.export import ClassifierOutputs, ExportMetadata, trace_torchscript
from clusterformer.modeling.backbone import ClassificationHead, build_clusterformer_backbone
from clusterformer.modeling.ops import (
    MSDeformAttn,
    extension_available,
    reference_implementation,
    reference_implementation_forced,
)
from clusterformer.modeling.segmenter import build_clusterformer_segmenter
from clusterformer.modeling.transformer_decoder.prediction_heads import mask_box_crops

TOLERANCE = 1e-4
SIZE = (64, 96)  # stride-4 map 16 x 24: padded windows in the backbone
OTHER_SIZE = (96, 96)


def small_segmenter() -> torch.nn.Module:
    """A random nano segmenter with every exported output: masks, boxes, cluster assignment,
    and the mask-shape class input (mask_box_crops)."""
    torch.manual_seed(0)
    return build_clusterformer_segmenter(
        5,
        backbone="nano",
        pixel_decoder_kwargs={"conv_dim": 32, "mask_dim": 32, "num_layers": 1, "n_heads": 4},
        decoder_kwargs={
            "hidden_dim": 32,
            "num_queries": 6,
            "nheads": 2,
            "dim_feedforward": 32,
            "dec_layers": 2,
            "box_on": True,
            "mask_shape_resolution": 4,
        },
    ).eval()


def small_classifier() -> ClassifierOutputs:
    torch.manual_seed(0)
    backbone = build_clusterformer_backbone("nano", out_features=["res5"])
    head = ClassificationHead(backbone.out_feature_channels, 4)
    return ClassifierOutputs(backbone, head).eval()


def assert_parity(exported: dict, eager: dict) -> None:
    assert list(exported) == list(eager)
    for name, ref in eager.items():
        assert exported[name].shape == ref.shape, name
        diff = (exported[name] - ref).abs().max().item()
        assert diff <= TOLERANCE, f"{name}: max abs difference {diff}"


@pytest.fixture(scope="module")
def segmenter():
    return small_segmenter()


@pytest.fixture(scope="module")
def images():
    return torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def onnx_export(segmenter, images, tmp_path_factory):
    path, _ = export(segmenter, images, tmp_path_factory.mktemp("onnx"), "onnx")
    return path


def test_reference_implementation_context_traces_grid_sample():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2).eval()
    shapes = torch.tensor([[4, 6], [2, 3]])
    starts = torch.tensor([0, 24])
    args = (torch.randn(1, 5, 16), torch.rand(1, 5, 2, 2), torch.randn(1, 30, 16), shapes, starts)
    assert not reference_implementation_forced()
    with reference_implementation():
        assert reference_implementation_forced()
        with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
            graph = str(torch.jit.trace(attn, args, check_trace=False).graph)
    assert not reference_implementation_forced()
    assert "grid_sampler" in graph and "clusterformer::ms_deform_attn" not in graph
    if extension_available("cpu"):
        # Outside the context the compiled kernels run: the dispatcher operator, one node that
        # ONNX cannot hold and a saved graph runs only where clusterformer._C is imported.
        with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
            graph = str(torch.jit.trace(attn, args, check_trace=False).graph)
        assert "clusterformer::ms_deform_attn" in graph and "grid_sampler" not in graph


def test_mask_box_crops_equal_the_affine_grid_crops():
    """mask_box_crops writes F.affine_grid out (ONNX has no affine_grid before opset 20): the
    crops must stay exactly those of affine_grid."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 19, 23) * 3
    logits[0, 0] = -10.0  # an empty mask: the whole canvas
    R = 7
    B, Q, H, W = logits.shape
    probs = logits.sigmoid().reshape(B * Q, 1, H, W)
    inside = probs[:, 0] > 0.5
    cols, rows = inside.any(1).float(), inside.any(2).float()
    x0, x1 = cols.argmax(1).float(), W - cols.flip(1).argmax(1).float()
    y0, y1 = rows.argmax(1).float(), H - rows.flip(1).argmax(1).float()
    empty = ~inside.flatten(1).any(1)
    x0, y0 = x0.masked_fill(empty, 0.0), y0.masked_fill(empty, 0.0)
    x1, y1 = x1.masked_fill(empty, float(W)), y1.masked_fill(empty, float(H))
    theta = torch.zeros(B * Q, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = (x1 - x0) / W, (x0 + x1) / W - 1.0
    theta[:, 1, 1], theta[:, 1, 2] = (y1 - y0) / H, (y0 + y1) / H - 1.0
    grid = F.affine_grid(theta, [B * Q, 1, R, R], align_corners=False)
    expected = F.grid_sample(probs, grid, mode="bilinear", align_corners=False).reshape(B, Q, R, R)
    torch.testing.assert_close(mask_box_crops(logits, R), expected, rtol=0, atol=0)


def test_torchscript_matches_eager_and_runs_at_its_size_only(segmenter, images, tmp_path):
    path, metadata = export(segmenter, images, tmp_path, "torchscript")
    assert path.suffix == ".ts" and metadata.input_shape == [1, 3, *SIZE]
    assert metadata.output_names == ["pred_logits", "pred_masks", "pred_boxes", "pixel_assignment"]
    exported = ExportedModel(path)
    assert_parity(exported(images), eager_outputs(segmenter, images))
    other = torch.randn(1, 3, *OTHER_SIZE)
    with pytest.raises(ValueError, match=r"takes images of shape \[1, 3, 64, 96\] only"):
        exported(other)
    # Why the check exists: the traced graph itself cannot run at another size.
    with pytest.raises(RuntimeError):
        torch.jit.load(str(path))(other)


def test_onnx_runtime_matches_eager_and_runs_at_its_size_only(segmenter, images, onnx_export):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_export))
    ops = {node.op_type for node in model.graph.node}
    assert "GridSample" in ops  # the deformable attention's PyTorch reference
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer if t.dims)
    exported = ExportedModel(onnx_export, num_threads=1)
    assert_parity(exported(images), eager_outputs(segmenter, images))
    other = torch.randn(1, 3, *OTHER_SIZE)
    with pytest.raises(ValueError, match="export again at this size"):
        exported(other)
    session = ort.InferenceSession(str(onnx_export), providers=["CPUExecutionProvider"])
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    failures = (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.RuntimeException)
    with pytest.raises(failures):  # the graph's reshapes are fixed at the traced size
        session.run(None, {"images": other.numpy()})


def test_classifier_exports_match_eager(tmp_path):
    model = small_classifier()
    images = torch.randn(1, 3, 64, 64)
    reference = eager_outputs(model, images)
    assert list(reference) == ["logits"] and reference["logits"].shape == (1, 4)
    for fmt in ("torchscript", "onnx"):
        path, metadata = export(model, images, tmp_path, fmt)
        assert metadata.kind == "classification"
        assert ExportMetadata.load(path) == metadata
        assert_parity(ExportedModel(path, num_threads=1)(images), reference)


def test_export_rejects_what_it_cannot_export(segmenter, tmp_path):
    with pytest.raises(ValueError, match="multiples of 32"):
        trace_torchscript(segmenter, torch.randn(1, 3, 64, 90))
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        trace_torchscript(segmenter, torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="opset 16"):
        export(segmenter, torch.randn(1, 3, 64, 64), tmp_path, "onnx", opset=15)
    with pytest.raises(TypeError, match="Cannot export"):
        trace_torchscript(torch.nn.Linear(2, 2), torch.randn(1, 3, 64, 64))
    with pytest.raises(FileNotFoundError, match="metadata is missing"):
        (tmp_path / "orphan.ts").write_bytes(b"")
        ExportedModel(Path(tmp_path / "orphan.ts"))


def test_export_traces_in_eval_mode_and_restores_the_training_flags(images):
    model = small_segmenter().eval()
    trace_torchscript(model, images)
    eager_outputs(model, images)
    # An eval model stays in eval mode (a fresh wrapper around it is in training mode, and
    # restoring the wrapper's flag once put the model into training mode).
    assert not any(m.training for m in model.modules())
    model.train()
    traced, _ = trace_torchscript(model, images)
    assert all(m.training for m in model.modules())
    model.eval()
    # Traced in eval mode: no deep-supervision masks, the eval-mode outputs.
    assert_parity(
        dict(zip(eager_outputs(model, images), traced(images))), eager_outputs(model, images)
    )
