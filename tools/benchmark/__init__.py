"""Speed, memory, parameters and FLOPs of ClusterFormer against the peers users would pick.

Suites (``--suites``; all but ``compile`` by default, ``all`` for every one):

* ``backbones``: ClusterFormer-T/S against timm's Swin-T/S and ConvNeXt-T/S (random init, all as
  four-stage feature extractors), at 224x224 and 512x512, inference and one training step
  (forward, backward, AdamW step);
* ``panoptic``: the full panoptic model, ClusterFormer-T against Hugging Face transformers'
  ``Mask2FormerForUniversalSegmentation`` with a Swin-T backbone config (random init, 100
  queries, 9 decoder layers, 6 encoder layers, 133 classes) and EoMT
  (``EomtForUniversalSegmentation``, ViT-S and ViT-B, square inputs only), at 512x512 on CPU and
  800x1344 on GPU (1333 padded to a multiple of 32, as Detectron2 pads), inference;
* ``scaling``: backbone latency and peak memory at 256, 384, 512, 768 and 1024 px (inference),
  with the exponent of a least-squares fit of log(cost) against log(pixels);
* ``components``: ClusterFormer's hot spots alone (the backbone's clustering mixer at stages 1
  and 3, the decoder's clustering cross-attention, the whole transformer decoder), forward and
  forward + backward: the before/after figures of optimisations;
* ``compile``: ``torch.compile`` (inductor) against eager for the ClusterFormer-T backbone and
  panoptic model (inference; the first call's compile time is reported apart).

Every group of contenders (same suite, input, batch and mode) is timed alternately, repeat by
repeat, after warm-up (:func:`tools.benchmark.common.time_alternating`); latency is the median,
throughput ``batch / latency``. Peak memory is measured in a fresh process per contender on CPU
(peak resident set size above the state before the step) and with the CUDA allocator's peak on
GPU.
FLOPs are fvcore's count at batch 1 (multiply-accumulates, "GMACs", the Swin/ConvNeXt
convention; see ``tools/count_params_flops.py``), with the deformable sampling and fused
attention counted by the handlers of :mod:`tools.benchmark.flops`.

Writes ``<output-dir>/benchmark_<device><suffix>.json`` and ``.md`` and PNG plots, and prints
every ClusterFormer / peer ratio. Runs without detectron2 (needs timm and transformers)::

    python -m tools.benchmark                                # CPU (or --device cuda)
    python -m tools.benchmark --quick --output-dir /tmp/bench   # smoke test

(from the repository root). The package, by concern: :mod:`~tools.benchmark.cli` (command
line, the run and its outputs), :mod:`~tools.benchmark.suites` (what each suite measures, the
timing of a group), :mod:`~tools.benchmark.contenders` and :mod:`~tools.benchmark.peers` (the
models compared), :mod:`~tools.benchmark.steps` (the timed step), :mod:`~tools.benchmark.flops`,
:mod:`~tools.benchmark.memory` (the memory child process), :mod:`~tools.benchmark.stats`,
:mod:`~tools.benchmark.report` (Markdown, targets), :mod:`~tools.benchmark.plots`, and
:mod:`~tools.benchmark.common` (timers, alternating timing, peak memory, run metadata), which
the other benchmarks share: :mod:`~tools.benchmark.ms_deform_attn` (the deformable-attention
kernels) and :mod:`~tools.benchmark.train_step` (the `make run` training step).
"""
