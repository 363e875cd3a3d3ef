"""tools/count_params_flops.py: the broadcast-aware matmul count and a run on the nano preset."""

import pytest
import torch

from tools import count_params_flops as tool

pytest.importorskip("fvcore")


class BroadcastMatmul(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.Parameter(torch.randn(4, 49))  # (K, N), shared by all windows

    def forward(self, x):  # x: (B, 3, 224, 224) only fixes the batch
        tokens = x.new_ones(x.shape[0], 2, 6, 49, 8)  # (B, heads, windows, N, d)
        return torch.matmul(self.pool, tokens)


def test_matmul_count_includes_broadcast_batch():
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(BroadcastMatmul(), torch.zeros(3, 3, 224, 224))
    analysis.set_op_handle("aten::matmul", tool.broadcast_matmul_flop_jit)
    analysis.unsupported_ops_warnings(False)
    assert analysis.total() == 3 * 2 * 6 * 4 * 49 * 8


def test_count_nano():
    from clusterformer.modeling.backbone import clusterformer_nano

    result = tool.count(clusterformer_nano(), 64)
    assert result["params"] == sum(p.numel() for p in clusterformer_nano().parameters())
    # The mixers are part of the total, their clustering part of the mixers.
    assert 0 < result["clustering_macs"] < result["mixer_macs"] < result["macs"]
    # The 4x4 stem alone: 16 x 16 outputs x 32 channels x (5 x 4 x 4) MACs.
    assert result["by_op"]["conv"] > 16 * 16 * 32 * 80
