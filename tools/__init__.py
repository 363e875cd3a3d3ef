"""The project's tools, as the package ``tools``: benchmarks, experiments, deployment, training
reports.

Run a tool as a module, from the repository root::

    python -m tools.benchmark --quick --output-dir /tmp/bench
    python -m tools.experiments.shapes_reference output/shapes_panoptic_reference \\
        --weights checkpoints/shapes/clusterformer_nano_shapes_panoptic.pth

``-m`` puts the working directory first on ``sys.path``, so ``tools`` is this package (the
detectron2 wheel installs a top-level package named ``tools`` too, its own scripts, in
site-packages) and ``clusterformer`` the checkout's. Tests import the tools the same way
(``pythonpath = .`` in setup.cfg).

The scripts that import nothing of this package (``plot_training.py``, ``summarize_run.py``,
``extract_backbone.py``, ``convert_mask2former.py``, ...) also run as files,
``python tools/<name>.py``. So do the experiment scripts, whose reports give their command in
that form: each starts with the bootstrap below, which, only when the script is run as a file
(no ``__package__``), puts the repository root first on ``sys.path`` as ``-m`` does::

    if not __package__:  # run as a file: see tools/__init__.py
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
"""
