"""benchmarks/flops_matching.py: what it counts is what the matched-compute comparisons compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def fm():
    return load_benchmark("flops_matching")


def test_the_counter_prices_sparse_products_message_passing_and_cpu_attention(fm):
    x = torch.zeros(6, 40)
    x[torch.arange(6), torch.arange(6) * 3] = 1.0
    x[0, 39] = 2.0  # 7 stored entries
    w = torch.randn(40, 5)
    with fm.counter() as c:
        torch.sparse.mm(x.to_sparse_coo().coalesce(), w)
    assert c.get_total_flops() == 2 * 7 * 5  # not 2 * 6 * 40 * 5, a dense product's
    messages, index = torch.randn(9, 4), torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 0])
    with fm.counter() as c:
        torch.zeros(4, 4).scatter_add_(0, index[:, None].expand(9, 4), messages)
    assert c.get_total_flops() == 2 * 9 * 4  # a multiply-add per aggregated feature, as A @ X
    q = k = v = torch.randn(2, 3, 16, 8)  # (batch, heads, positions, head width)
    with fm.counter() as c:
        F.scaled_dot_product_attention(q, k, v)
    assert c.get_total_flops() == 2 * (2 * 2 * 3 * 16 * 16 * 8)  # QK^T and AV, each 2 * B * H * T^2 * d


def test_a_masked_blocks_weight_density_is_what_its_layers_keep(fm):
    from tiedlab.core import build_block

    for sparsity in (0.5, 0.75):
        block = build_block(lambda: _Cell(), dict(mode="tied", depth=4, mask=dict(mode="distinct", sparsity=sparsity)))
        density, unmasked = fm.weight_density(block)
        assert density == pytest.approx(1 - sparsity) and unmasked == []
    dense, unmasked = fm.weight_density(build_block(lambda: _Cell(), dict(mode="tied", depth=4)))
    assert dense == 1.0 and unmasked == ["lin.weight"]


class _Cell(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)

    def forward(self, z, x):
        return torch.tanh(self.lin(z) + x)


def test_quicks_matched_arms_match_the_cells_weight_products_and_the_language_arm_not_its_attention(fm):
    """The quick study's flops/language arms, as the runner composes them: the block's weight products are equal
    (width 64 at density 0.25 against width 32), its attention is not (linear in the width)."""
    (language,) = [c for c in fm.comparisons("quick") if c[0] == "flops/language"]
    _, _, masked_overrides, _, dense_overrides = language
    masked, dense = fm.arm_flops(masked_overrides), fm.arm_flops(dense_overrides)
    assert masked["density"] == pytest.approx(0.25) and dense["density"] == 1.0
    assert masked["block_weights"] == pytest.approx(dense["block_weights"], rel=1e-9)
    assert masked["block_other"] == pytest.approx(2 * dense["block_other"], rel=1e-9)
