"""The model core: plain PyTorch, importable without detectron2.

``backbone`` (image-level clustering), ``ops`` (multi-scale deformable attention),
``pixel_decoder``, ``transformer_decoder`` (query-level clustering), matcher, criterion and
post-processing. No module here imports detectron2: the Detectron2 layer that wires them to
configs and data is ``clusterformer.d2``.
"""
