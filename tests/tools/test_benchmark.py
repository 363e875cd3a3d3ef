"""tools/benchmark/ end to end on small inputs (the figures themselves are in docs/), and its
pieces: the exponent fit, the ratios, the peak-memory probe and the FLOP handlers."""

import json
import os
import subprocess
import sys
import types

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("fvcore")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def bench():
    """The package's functions the tests call, by their names."""
    from tools.benchmark.cli import main
    from tools.benchmark.flops import count_gmacs
    from tools.benchmark.stats import fitted_exponent, ratios

    return types.SimpleNamespace(
        main=main, count_gmacs=count_gmacs, fitted_exponent=fitted_exponent, ratios=ratios
    )


def test_exponent_fit_recovers_a_power_law(bench):
    pixels = [256**2, 512**2, 1024**2]
    assert bench.fitted_exponent(pixels, [3.0 * p**1.5 for p in pixels]) == pytest.approx(1.5)
    assert bench.fitted_exponent(pixels, [7.0] * 3) == pytest.approx(0.0)
    assert bench.fitted_exponent(pixels[:1], [1.0]) is None


def test_ratios_pair_each_clusterformer_row_with_same_size_peers(bench):
    def row(model, family, size_class, latency, mode="inference"):
        return {
            "suite": "backbones",
            "model": model,
            "family": family,
            "size_class": size_class,
            "height": 224,
            "width": 224,
            "batch": 1,
            "mode": mode,
            "latency_ms": latency,
            "peak_memory_mib": None,
            "gmacs": 2.0,
            "params_m": 10.0,
        }

    rows = [
        row("CF-T", "clusterformer", "tiny", 50.0),
        row("Swin-T", "peer", "tiny", 100.0),
        row("Swin-S", "peer", "small", 10.0),
        row("Swin-T", "peer", "tiny", 1.0, mode="train"),
    ]
    (ratio,) = bench.ratios(rows)
    assert ratio["peer"] == "Swin-T" and ratio["latency_ms"] == pytest.approx(0.5)
    assert ratio["peak_memory_mib"] is None and ratio["gmacs"] == pytest.approx(1.0)


PEAK_OF_A_TEMPORARY = """
import json, torch
from tools.benchmark import common

def allocate():
    buffer = torch.ones(64, 2**20)  # 256 MiB, freed before returning
    buffer.add_(1)

print(json.dumps([common.cpu_peak_memory_supported(), common.peak_memory_mib(allocate, "cpu")]))
"""


def test_peak_memory_sees_a_large_temporary(bench):
    """In a fresh process with CPU_MEMORY_ENV, as the benchmark's memory child measures: in a
    long-lived one (this test process), glibc may serve the block from memory it kept resident
    after an earlier test freed a large one, and the peak would not move."""
    from tools.benchmark.common import CPU_MEMORY_ENV
    from tools.benchmark.memory import ROOT

    proc = subprocess.run(
        [sys.executable, "-c", PEAK_OF_A_TEMPORARY],
        cwd=ROOT,
        env={**os.environ, **CPU_MEMORY_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    supported, peak = json.loads(proc.stdout.strip().splitlines()[-1])
    if not supported:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert peak > 200


def test_deformable_sampling_is_counted(bench):
    from clusterformer.modeling.ops import MSDeformAttn

    attention = MSDeformAttn(32, n_levels=2, n_heads=2, n_points=3)
    shapes = torch.tensor([[4, 4], [2, 2]])
    starts = torch.tensor([0, 16])
    query = torch.randn(1, 20, 32)
    reference = torch.rand(1, 20, 2, 2)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = attention

        def forward(self, q):
            return self.attention(q, reference, q, shapes, starts)

    counted = bench.count_gmacs(Wrapper(), (query,))
    sampling = 1 * 20 * 2 * 2 * 3 * 16 * 5  # queries x heads x levels x points x d x 5 MACs
    linear = 20 * 32 * (2 * 2 * 3 * 2 + 2 * 2 * 3) + 2 * 20 * 32 * 32  # offsets, weights, v, out
    assert counted["gmacs"] * 1e9 == pytest.approx(sampling + linear)


@pytest.mark.slow
def test_quick_run_writes_every_report(bench, tmp_path):
    # Peak memory (a fresh process per contender) only for the backbones, to save time.
    common = ["--quick", "--output-dir", str(tmp_path), "--threads", "1"]
    bench.main([*common, "--suites", "backbones", "--suffix", "_memory"])
    result = bench.main([*common, "--suites", "panoptic", "scaling", "components", "--no-memory"])
    backbones = json.loads((tmp_path / "benchmark_cpu_memory.json").read_text())["rows"]
    assert {r["model"] for r in backbones} == {"ClusterFormer-T", "Swin-T", "ConvNeXt-T"}
    assert {r["mode"] for r in backbones} == {"inference", "train"}
    cf = {r["mode"]: r for r in backbones if r["model"] == "ClusterFormer-T"}
    # Training holds gradients and AdamW state: it needs more memory than inference.
    if cf["inference"]["peak_memory_mib"] is not None:
        assert cf["train"]["peak_memory_mib"] > cf["inference"]["peak_memory_mib"] > 0
    assert cf["inference"]["gmacs"] == pytest.approx(5.63, abs=0.01)  # docs/backbone_complexity.md

    stem = tmp_path / "benchmark_cpu_quick"
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert saved["rows"] == result["rows"]
    assert {r["suite"] for r in saved["rows"]} == {"panoptic", "scaling", "components"}
    for r in backbones + saved["rows"]:
        assert r["latency_ms"] > 0 and r["params_m"] > 0
        assert r["gmacs"] is None or r["gmacs"] > 0
    pairs = {(q["suite"], q["peer"]) for q in saved["ratios"]}
    assert ("panoptic", "Mask2Former-Swin-T (transformers)") in pairs
    assert ("scaling", "ConvNeXt-T") in pairs
    assert set(saved["scaling_exponents"]) == {"ClusterFormer-T", "Swin-T", "ConvNeXt-T"}
    assert any("panoptic latency" in t for t in saved["targets"])
    report = stem.with_suffix(".md").read_text()
    assert "## Ratios ClusterFormer / peer" in report and "## Cost growth" in report
    for suite in ("panoptic", "components", "scaling"):
        assert (tmp_path / f"benchmark_cpu_quick_{suite}.png").stat().st_size > 10_000
    assert (tmp_path / "benchmark_cpu_memory_backbones.png").is_file()
