"""Mask2Former weights -> ClusterFormer's pixel decoder and masked-attention decoder.

The parity tests build a randomly initialised transformers ``Mask2FormerForUniversalSegmentation``
(the Swin-T config of ``tools/benchmark/peers.py``'s Mask2Former peer), convert its decoders' weights,
feed this project's modules the backbone features of the transformers model, and compare the class
and mask logits of every prediction. They run where transformers is installed (.venv-modern); the
Detectron2-name tests need neither transformers nor detectron2.
"""

from __future__ import annotations

import pickle
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch

from clusterformer.modeling.mask2former_conversion import (
    Mask2FormerConversionError,
    check_converted,
    convert_mask2former,
    detect_mask2former_format,
    inferred_config,
    load_state_dict_file,
    to_detectron2_mask2former,
    to_transformers_mask2former,
)
from clusterformer.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from clusterformer.modeling.transformer_decoder import ClusteringTransformerDecoder
from clusterformer.utils.safe_pickle import UnsafeCheckpointError

SWIN_T_CHANNELS = {"res2": 96, "res3": 192, "res4": 384, "res5": 768}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
NUM_CLASSES = 133  # COCO panoptic, as the benchmark's peer
IMAGE_SIZE = (256, 320)
TOLERANCE = 1e-4


def _transformers():
    return pytest.importorskip(
        "transformers", reason="transformers is not installed (it is in .venv-modern)"
    )


def build_hf_mask2former(*, pre_norm: bool = False, enforce_input_projection: bool = False):
    """The Swin-T Mask2Former of tools/benchmark.py (HFMask2Former), random init, eval mode.

    Every decoder parameter then gets a little noise: transformers initialises the deformable
    attention's sampling-offset and attention-weight matrices (and several biases) to zero, and
    zeros would hide a wrong mapping of them.
    """
    transformers = _transformers()
    swin = transformers.SwinConfig(
        image_size=list(IMAGE_SIZE),
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    # decoder_layers counts Mask2Former's prediction on the initial queries: 10 -> 9 layers.
    config = transformers.Mask2FormerConfig(
        backbone_config=swin,
        num_queries=100,
        decoder_layers=10,
        encoder_layers=6,
        num_labels=NUM_CLASSES,
        pre_norm=pre_norm,
        enforce_input_projection=enforce_input_projection,
    )
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith("model.pixel_level_module.encoder."):
                param.add_(torch.randn_like(param) * 0.02)
    return model


def build_ours(
    *,
    pre_norm: bool = False,
    enforce_input_project: bool = False,
    num_classes: int = NUM_CLASSES,
    dec_layers: int = 9,
    enc_layers: int = 6,
    channels: Dict[str, int] = SWIN_T_CHANNELS,
    strides: Dict[str, int] = STRIDES,
    common_stride: int = 4,
) -> Tuple[MSDeformAttnPixelDecoder, ClusteringTransformerDecoder]:
    """This project's pixel decoder and masked-attention decoder with Mask2Former's
    hyper-parameters (256 channels, 8 heads, 4 points, 1024 / 2048 FFNs, 100 queries)."""
    pixel_decoder = MSDeformAttnPixelDecoder(
        channels,
        strides,
        conv_dim=256,
        mask_dim=256,
        norm="GN",
        common_stride=common_stride,
        num_layers=enc_layers,
        n_heads=8,
        n_points=4,
        dim_feedforward=1024,
    )
    decoder = ClusteringTransformerDecoder(
        256,
        num_classes,
        hidden_dim=256,
        num_queries=100,
        nheads=8,
        dim_feedforward=2048,
        dec_layers=dec_layers,
        pre_norm=pre_norm,
        mask_dim=256,
        enforce_input_project=enforce_input_project,
        cross_attention="masked_attention",
    )
    return pixel_decoder.eval(), decoder.eval()


def full_state(pixel_decoder, decoder) -> Dict[str, torch.Tensor]:
    """The two modules' weights under the ClusterFormer model's names."""
    state = {f"pixel_decoder.{k}": v for k, v in pixel_decoder.state_dict().items()}
    state.update({f"transformer_decoder.{k}": v for k, v in decoder.state_dict().items()})
    return state


def load_converted(conversion, pixel_decoder, decoder) -> None:
    check_converted(conversion.state_dict, full_state(pixel_decoder, decoder))
    pixel_decoder.load_state_dict(conversion.module_state("pixel_decoder."), strict=True)
    decoder.load_state_dict(conversion.module_state("transformer_decoder."), strict=True)


# ---- parity with transformers' Mask2Former --------------------------------------------------
#
# Masked attention thresholds the previous mask logits at 0: a pixel whose logit is within
# rounding error of 0 can be in one model's attention set and not in the other's. In float32 a
# few such pixels exist in most runs (|logit| ~ 5e-7 at a 32x40 level) and a flip moves that
# query's later logits by up to ~1e-3, a discontinuity of the function itself, not a difference
# between the two. Hence two tests: in float64 (no flips) the whole models are compared as they
# are; in float32 the restrictions are checked to agree except at such pixels, and our decoder
# then continues from Mask2Former's restrictions.


def _predictions(hf, pixel_decoder, decoder, images):
    """Mask2Former's outputs and ours on the same backbone features."""
    with torch.no_grad():
        expected = hf(pixel_values=images, output_auxiliary_logits=True)
        backbone = hf.model.pixel_level_module.encoder(images).feature_maps
        features = dict(zip(["res2", "res3", "res4", "res5"], backbone))
        mask_features, multi_scale = pixel_decoder(features)
        out = decoder(multi_scale, mask_features)
    return expected, out


def _max_differences(expected, out) -> Dict[str, float]:
    """Max abs difference of the final class and mask logits and of every intermediate
    prediction's class logits."""
    assert out["pred_masks"].shape == expected.masks_queries_logits.shape == (2, 100, 64, 80)
    assert len(out["aux_outputs"]) == len(expected.auxiliary_logits) == 9
    diffs = {
        "class": (out["pred_logits"] - expected.class_queries_logits).abs().max().item(),
        "mask": (out["pred_masks"] - expected.masks_queries_logits).abs().max().item(),
    }
    for layer, (ours, theirs) in enumerate(zip(out["aux_outputs"], expected.auxiliary_logits)):
        diff = (ours["pred_logits"] - theirs["class_queries_logits"]).abs().max().item()
        diffs[f"class of prediction {layer}"] = diff
    return diffs


def test_transformers_mask2former_parity_float64():
    hf = build_hf_mask2former().double()
    conversion = convert_mask2former(hf.state_dict())
    assert conversion.source_format == "transformers"
    pixel_decoder, decoder = build_ours()
    load_converted(conversion, pixel_decoder, decoder)
    pixel_decoder.double(), decoder.double()
    torch.manual_seed(1)
    images = torch.randn(2, 3, *IMAGE_SIZE, dtype=torch.float64)
    expected, out = _predictions(hf, pixel_decoder, decoder, images)
    diffs = _max_differences(expected, out)
    # Measured: <= 6e-7 (our sine position embeddings are computed in float32).
    assert max(diffs.values()) <= TOLERANCE, diffs
    # The comparison exercises the masks: about half of the pixels are excluded from attention.
    allowed = torch.stack([a["masks_queries_logits"] >= 0 for a in expected.auxiliary_logits])
    assert 0.1 < allowed.float().mean().item() < 0.9


@pytest.mark.parametrize(
    "pre_norm, enforce_input_projection", [(False, False), (True, True)], ids=["post", "pre+proj"]
)
def test_transformers_mask2former_parity_float32(pre_norm: bool, enforce_input_projection: bool):
    import torch.nn.functional as F

    from clusterformer.modeling.transformer_decoder import release_empty_restrictions

    hf = build_hf_mask2former(pre_norm=pre_norm, enforce_input_projection=enforce_input_projection)
    pixel_decoder, decoder = build_ours(
        pre_norm=pre_norm, enforce_input_project=enforce_input_projection
    )
    load_converted(convert_mask2former(hf.state_dict()), pixel_decoder, decoder)

    # Mask2Former's attention masks, and the level-resolution logits they threshold.
    recorded: List[Tuple[torch.Tensor, torch.Tensor]] = []
    predictor = hf.model.transformer_module.decoder.mask_predictor
    predict_masks = predictor.forward

    def recording(outputs, pixel_embeddings, attention_mask_target_size=None):
        masks, attention = predict_masks(outputs, pixel_embeddings, attention_mask_target_size)
        logits = F.interpolate(
            masks, size=attention_mask_target_size, mode="bilinear", align_corners=False
        )
        recorded.append((attention, logits.flatten(2)))
        return masks, attention

    predictor.forward = recording
    own_restriction = decoder.assignment_restriction
    flips: List[int] = []

    def shared_restriction(predictions, size):
        ours = own_restriction(predictions, size)
        attention, logits = recorded[len(flips)]
        B, Q, N = ours.shape
        # (B * heads, Q, N) True = excluded, the same for every head; empty rows released.
        theirs = release_empty_restrictions(~attention.view(B, -1, Q, N)[:, 0])
        differ = ours != theirs
        assert not (differ & (logits.abs() > 1e-4)).any(), "restrictions differ away from 0"
        flips.append(int(differ.sum()))
        return theirs

    decoder.assignment_restriction = shared_restriction
    torch.manual_seed(1)
    expected, out = _predictions(hf, pixel_decoder, decoder, torch.randn(2, 3, *IMAGE_SIZE))
    assert len(flips) == 9
    diffs = _max_differences(expected, out)
    # Measured: <= 4e-6.
    assert max(diffs.values()) <= TOLERANCE, (diffs, flips)


def test_transformers_conversion_uses_every_decoder_weight():
    hf = build_hf_mask2former()
    state = hf.state_dict()
    conversion = convert_mask2former(state)
    assert conversion.unmapped == []
    backbone = [k for k in state if k.startswith("model.pixel_level_module.encoder.")]
    assert sorted(conversion.skipped) == sorted(backbone + ["criterion.empty_weight"])
    # Splitting and fusing projections moves numbers, never drops or duplicates them.
    source = sum(v.numel() for k, v in state.items() if k not in conversion.skipped)
    assert sum(v.numel() for v in conversion.state_dict.values()) == source
    assert inferred_config(conversion.state_dict) == {
        "MODEL.CLUSTER_DECODER.NUM_OBJECT_QUERIES": 100,
        "MODEL.CLUSTER_DECODER.HIDDEN_DIM": 256,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": NUM_CLASSES,
        "MODEL.CLUSTER_DECODER.DEC_LAYERS": 9,
        "MODEL.CLUSTER_DECODER.DIM_FEEDFORWARD": 2048,
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 6,
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD": 1024,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256,
        "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
        "MODEL.CLUSTER_DECODER.ENFORCE_INPUT_PROJ": False,
    }


def test_transformers_to_detectron2_names_round_trip():
    hf = build_hf_mask2former()
    ours = convert_mask2former(hf.state_dict()).state_dict
    d2 = to_detectron2_mask2former(ours)
    assert set(d2) == set(
        detectron2_mask2former_keys(
            [96], [768, 384, 192], enc_layers=6, dec_layers=9, num_classes=NUM_CLASSES
        )
    )
    back = convert_mask2former(d2)
    assert back.source_format == "detectron2"
    assert set(back.state_dict) == set(ours)
    for key, value in ours.items():
        assert torch.equal(back.state_dict[key], value), key


def test_transformers_names_round_trip():
    hf = build_hf_mask2former()
    state = hf.state_dict()
    conversion = convert_mask2former(state)
    back = to_transformers_mask2former(conversion.state_dict)
    assert set(back) == set(state) - set(conversion.skipped)
    for key, value in back.items():
        assert torch.equal(value, state[key]), key
    # The Mask2Former weights of our modules load into transformers' model with no missing key
    # beyond its backbone and loss buffer.
    result = hf.load_state_dict(back, strict=False)
    assert sorted(result.missing_keys) == sorted(conversion.skipped)
    assert result.unexpected_keys == []


def test_mask2former_model_without_head_prefix():
    """``Mask2FormerModel`` (no class predictor) has the same keys without ``model.``."""
    hf = build_hf_mask2former()
    state = hf.model.state_dict()
    conversion = convert_mask2former(state)
    assert conversion.source_format == "transformers"
    assert not any("class_embed" in k for k in conversion.state_dict)
    assert "transformer_decoder.query_feat.weight" in conversion.state_dict


# ---- Detectron2 names -----------------------------------------------------------------------


def detectron2_mask2former_keys(
    fpn_channels: Sequence[int],
    transformer_channels: Sequence[int],
    *,
    enc_layers: int,
    dec_layers: int,
    num_classes: int,
    conv_dim: int = 256,
    hidden: int = 256,
    queries: int = 100,
    heads: int = 8,
    points: int = 4,
) -> Dict[str, Tuple[int, ...]]:
    """The decoder keys and shapes of facebookresearch/Mask2Former's ``MaskFormer`` with
    ``MSDeformAttnPixelDecoder`` and ``MultiScaleMaskedTransformerDecoder`` (GN norm, no input
    projection), written from its modules' definitions, independently of the converter's table.

    ``fpn_channels``: the FPN features' channels finest first (``adapter_1`` first);
    ``transformer_channels``: the encoder levels' channels coarsest first (``input_proj.0``).
    """
    pd, td = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
    levels = len(transformer_channels)
    keys: Dict[str, Tuple[int, ...]] = {}
    for i, c in enumerate(transformer_channels):
        keys[f"{pd}input_proj.{i}.0.weight"] = (conv_dim, c, 1, 1)
        keys[f"{pd}input_proj.{i}.0.bias"] = (conv_dim,)
        keys[f"{pd}input_proj.{i}.1.weight"] = (conv_dim,)
        keys[f"{pd}input_proj.{i}.1.bias"] = (conv_dim,)
    keys[f"{pd}transformer.level_embed"] = (levels, conv_dim)
    for j in range(enc_layers):
        layer = f"{pd}transformer.encoder.layers.{j}."
        shapes = {
            "self_attn.sampling_offsets": heads * levels * points * 2,
            "self_attn.attention_weights": heads * levels * points,
            "self_attn.value_proj": conv_dim,
            "self_attn.output_proj": conv_dim,
            "linear1": 1024,
        }
        for name, rows in shapes.items():
            keys[f"{layer}{name}.weight"] = (rows, conv_dim)
            keys[f"{layer}{name}.bias"] = (rows,)
        keys[f"{layer}linear2.weight"] = (conv_dim, 1024)
        keys[f"{layer}linear2.bias"] = (conv_dim,)
        for norm in ("norm1", "norm2"):
            keys[f"{layer}{norm}.weight"] = keys[f"{layer}{norm}.bias"] = (conv_dim,)
    keys[f"{pd}mask_features.weight"] = (256, conv_dim, 1, 1)
    keys[f"{pd}mask_features.bias"] = (256,)
    for k, c in enumerate(fpn_channels, start=1):
        keys[f"{pd}adapter_{k}.weight"] = (conv_dim, c, 1, 1)
        keys[f"{pd}layer_{k}.weight"] = (conv_dim, conv_dim, 3, 3)
        for conv in (f"adapter_{k}", f"layer_{k}"):
            keys[f"{pd}{conv}.norm.weight"] = keys[f"{pd}{conv}.norm.bias"] = (conv_dim,)
    for name in ("query_feat", "query_embed"):
        keys[f"{td}{name}.weight"] = (queries, hidden)
    keys[f"{td}level_embed.weight"] = (3, hidden)
    for i in range(dec_layers):
        for group, attn in (
            ("transformer_self_attention_layers", "self_attn"),
            ("transformer_cross_attention_layers", "multihead_attn"),
        ):
            keys[f"{td}{group}.{i}.{attn}.in_proj_weight"] = (3 * hidden, hidden)
            keys[f"{td}{group}.{i}.{attn}.in_proj_bias"] = (3 * hidden,)
            keys[f"{td}{group}.{i}.{attn}.out_proj.weight"] = (hidden, hidden)
            keys[f"{td}{group}.{i}.{attn}.out_proj.bias"] = (hidden,)
            keys[f"{td}{group}.{i}.norm.weight"] = keys[f"{td}{group}.{i}.norm.bias"] = (hidden,)
        ffn = f"{td}transformer_ffn_layers.{i}."
        keys[f"{ffn}linear1.weight"], keys[f"{ffn}linear1.bias"] = (2048, hidden), (2048,)
        keys[f"{ffn}linear2.weight"], keys[f"{ffn}linear2.bias"] = (hidden, 2048), (hidden,)
        keys[f"{ffn}norm.weight"] = keys[f"{ffn}norm.bias"] = (hidden,)
    keys[f"{td}decoder_norm.weight"] = keys[f"{td}decoder_norm.bias"] = (hidden,)
    keys[f"{td}class_embed.weight"] = (num_classes + 1, hidden)
    keys[f"{td}class_embed.bias"] = (num_classes + 1,)
    for i in range(3):
        keys[f"{td}mask_embed.layers.{i}.weight"] = (256 if i == 2 else hidden, hidden)
        keys[f"{td}mask_embed.layers.{i}.bias"] = (256 if i == 2 else hidden,)
    return keys


def synthetic_detectron2_checkpoint(
    fpn_channels: Sequence[int] = (96,),
    transformer_channels: Sequence[int] = (768, 384, 192),
    *,
    enc_layers: int = 2,
    dec_layers: int = 3,
    num_classes: int = 5,
    seed: int = 0,
) -> Dict[str, np.ndarray]:
    """A Detectron2 Mask2Former ``"model"`` dict of random float32 arrays, with a backbone
    weight and the criterion's buffer as the real files have."""
    rng = np.random.default_rng(seed)
    keys = detectron2_mask2former_keys(
        fpn_channels,
        transformer_channels,
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        num_classes=num_classes,
    )
    state = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in keys.items()}
    state["backbone.patch_embed.proj.weight"] = rng.standard_normal((96, 3, 4, 4)).astype(
        np.float32
    )
    state["criterion.empty_weight"] = np.ones(num_classes + 1, dtype=np.float32)
    return state


def test_our_modules_have_detectron2_mask2former_names():
    """Our modules' decoder weights, written under Detectron2's names, are exactly the keys and
    shapes of Mask2Former's modules; read back they load with no missing key."""
    torch.manual_seed(0)
    pixel_decoder, decoder = build_ours(num_classes=5, dec_layers=3, enc_layers=2)
    ours = full_state(pixel_decoder, decoder)
    d2 = to_detectron2_mask2former(ours)
    expected = detectron2_mask2former_keys(
        [96], [768, 384, 192], enc_layers=2, dec_layers=3, num_classes=5
    )
    assert {k: tuple(v.shape) for k, v in d2.items()} == expected
    # The fused cross-attention projection is [q; k; v], as nn.MultiheadAttention's.
    fused = d2[
        "sem_seg_head.predictor.transformer_cross_attention_layers.1.multihead_attn.in_proj_weight"
    ]
    assert torch.equal(fused[256:512], decoder.cross_attention_layers[1].k_proj.weight)

    back = convert_mask2former(d2)
    assert back.source_format == "detectron2" and back.skipped == {} and back.unmapped == []
    fresh_pixel, fresh_decoder = build_ours(num_classes=5, dec_layers=3, enc_layers=2)
    load_converted(back, fresh_pixel, fresh_decoder)
    for key, value in full_state(fresh_pixel, fresh_decoder).items():
        assert torch.equal(value, ours[key]), key


def test_fpn_levels_are_numbered_finest_first_in_mask2former():
    """Two FPN levels (common stride 2): ``adapter_1`` is the stride-2 lateral conv, which is
    ``lateral_convs.1`` here (processed last, coarse to fine)."""
    channels = {"res1": 48, **SWIN_T_CHANNELS}
    strides = {"res1": 2, **STRIDES}
    pixel_decoder, decoder = build_ours(
        num_classes=5,
        dec_layers=1,
        enc_layers=1,
        channels=channels,
        strides=strides,
        common_stride=2,
    )
    d2 = to_detectron2_mask2former(full_state(pixel_decoder, decoder))
    assert d2["sem_seg_head.pixel_decoder.adapter_1.weight"].shape == (256, 48, 1, 1)
    assert d2["sem_seg_head.pixel_decoder.adapter_2.weight"].shape == (256, 96, 1, 1)
    assert torch.equal(
        d2["sem_seg_head.pixel_decoder.layer_1.norm.weight"],
        pixel_decoder.output_convs[1][1].weight,
    )
    back = convert_mask2former(d2).state_dict
    assert back["pixel_decoder.lateral_convs.0.0.weight"].shape == (256, 96, 1, 1)


def test_detectron2_pkl_and_pth_files(tmp_path):
    state = synthetic_detectron2_checkpoint()
    pkl = tmp_path / "m2f.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    pth = tmp_path / "m2f.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}, "iteration": 9}, pth)
    for path in (pkl, pth):
        loaded = load_state_dict_file(str(path))
        assert detect_mask2former_format(loaded) == "detectron2"
        conversion = convert_mask2former(loaded)
        assert set(conversion.skipped) == {
            "backbone.patch_embed.proj.weight",
            "criterion.empty_weight",
        }
        pixel_decoder, decoder = build_ours(num_classes=5, dec_layers=3, enc_layers=2)
        load_converted(conversion, pixel_decoder, decoder)
        assert torch.equal(
            decoder.prediction_heads.class_embed.weight,
            torch.from_numpy(state["sem_seg_head.predictor.class_embed.weight"]),
        )
        q, k, v = np.split(
            state[
                "sem_seg_head.predictor.transformer_cross_attention_layers.2.multihead_attn.in_proj_bias"
            ],
            3,
        )
        assert torch.equal(decoder.cross_attention_layers[2].v_proj.bias, torch.from_numpy(v))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": np.zeros(1)}, "hook": print}, f)
    with pytest.raises(UnsafeCheckpointError, match="builtins.print"):
        load_state_dict_file(str(path))


def test_legacy_static_query_name():
    state = synthetic_detectron2_checkpoint()
    state["sem_seg_head.predictor.static_query.weight"] = state.pop(
        "sem_seg_head.predictor.query_feat.weight"
    )
    assert "transformer_decoder.query_feat.weight" in convert_mask2former(state).state_dict


def test_convert_tool(tmp_path, capsys):
    from tools import convert_mask2former as tool

    source = tmp_path / "m2f.pkl"
    with open(source, "wb") as f:
        pickle.dump({"model": synthetic_detectron2_checkpoint(), "__author__": "test"}, f)
    converted = tmp_path / "decoders.pth"
    assert tool.main([str(source), str(converted)]) == 0
    printed = capsys.readouterr().out
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES 5" in printed and "DEC_LAYERS 3" in printed
    assert "1 backbone" in printed
    checkpoint = torch.load(converted, weights_only=True)
    assert checkpoint["__meta__"]["source_format"] == "detectron2"
    pixel_decoder, decoder = build_ours(num_classes=5, dec_layers=3, enc_layers=2)
    state = full_state(pixel_decoder, decoder)
    assert set(checkpoint["model"]) == set(state)

    # Back to Detectron2 names, as a model-zoo pickle: the same arrays as the source.
    names = tmp_path / "names.pkl"
    assert tool.main(["--to-detectron2", str(converted), str(names)]) == 0
    original = synthetic_detectron2_checkpoint()
    written = load_state_dict_file(str(names))
    assert set(written) == set(original) - {
        "backbone.patch_embed.proj.weight",
        "criterion.empty_weight",
    }
    for key, value in written.items():
        assert isinstance(value, np.ndarray) and np.array_equal(value, original[key]), key

    # A ClusterFormer checkpoint is not a Mask2Former one: a message, status 1.
    assert tool.main([str(converted), str(tmp_path / "again.pth")]) == 1
    assert "not a Mask2Former checkpoint" in capsys.readouterr().err


# ---- errors ---------------------------------------------------------------------------------


def test_unknown_keys_are_listed():
    state = synthetic_detectron2_checkpoint()
    state["sem_seg_head.predictor.some_new_head.weight"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(Mask2FormerConversionError, match="some_new_head.weight"):
        convert_mask2former(state)
    lenient = convert_mask2former(state, strict=False)
    assert lenient.unmapped == ["sem_seg_head.predictor.some_new_head.weight"]


def test_not_a_mask2former_checkpoint():
    with pytest.raises(Mask2FormerConversionError, match="not a Mask2Former checkpoint"):
        convert_mask2former({"backbone.stem.weight": torch.zeros(1)})
    assert detect_mask2former_format({"pixel_decoder.mask_features.weight": 0}) is None


def test_shape_mismatch_and_missing_keys_are_listed():
    conversion = convert_mask2former(synthetic_detectron2_checkpoint(num_classes=5))
    pixel_decoder, decoder = build_ours(num_classes=7, dec_layers=4, enc_layers=2)
    with pytest.raises(Mask2FormerConversionError) as info:
        check_converted(conversion.state_dict, full_state(pixel_decoder, decoder))
    message = str(info.value)
    assert (
        "transformer_decoder.prediction_heads.class_embed.weight: (6, 256) in checkpoint vs (8, 256)"
        in message
    )
    assert "missing from the checkpoint: transformer_decoder.cross_attention_layers.3." in message
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES 5" in message
    assert "MODEL.CLUSTER_DECODER.DEC_LAYERS 3" in message


def test_clustering_decoder_keys_have_no_mask2former_names():
    """A box head has no counterpart: writing it under Mask2Former's names is an error."""
    decoder = ClusteringTransformerDecoder(256, 5, dec_layers=1, box_on=True)
    state = {f"transformer_decoder.{k}": v for k, v in decoder.state_dict().items()}
    with pytest.raises(Mask2FormerConversionError, match="anchor_boxes"):
        to_detectron2_mask2former(state)
