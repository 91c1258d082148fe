"""Masks: exact sparsity and patterns, distinct vs shared, and gradients that reach the one shared weight."""

import pytest
import torch
from torch import nn

from support.cells import InOutCell, TanhCell
from tiedlab.core import MaskSet, MaskSpec, build_block
from tiedlab.core.masks import disjoint_masks, nm_mask, unstructured_mask


class ConvCell(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.GroupNorm(2, c)

    def forward(self, z, x):
        return torch.relu(self.norm(self.conv(z) + x))


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9])
def test_unstructured_has_exact_zero_count(sparsity):
    g = torch.Generator().manual_seed(0)
    m = unstructured_mask(torch.Size([16, 8, 3, 3]), sparsity, g)
    assert int((m == 0).sum()) == round(sparsity * m.numel())
    assert set(m.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_keeps_n_in_every_group_of_m_input_channels_at_each_output_and_kernel_position(n, m):
    mask = nm_mask(torch.Size([6, 8, 3, 3]), n, m, torch.Generator().manual_seed(0))
    # groups run along dim 1 (input channels) at each (out, kh, kw): the layout sparse kernels use
    groups = mask.permute(0, 2, 3, 1).reshape(6, 3, 3, 8 // m, m)
    assert torch.all(groups.sum(dim=-1) == n)
    # and not along the flattened (in, kh, kw) axis (the old layout): there most groups are not n of m
    flat = mask.reshape(6, -1).reshape(-1, m).sum(dim=1)
    assert not torch.all(flat == n)


def test_nm_on_a_linear_weight_groups_its_input_features():
    mask = nm_mask(torch.Size([5, 8]), 2, 4, torch.Generator().manual_seed(1))
    assert torch.all(mask.reshape(5, 2, 4).sum(dim=-1) == 2)


def test_nm_on_a_weight_stored_in_out_groups_along_dim_0_when_the_cell_says_so():
    """transformers' Conv1D stores (in, out): a cell's ``mask_input_dims()`` names such weights, and their N:M
    groups run along dim 0, the input features; other weights keep dim 1; a name that is no maskable weight and
    an input dim that is neither 0 nor 1 are refused."""
    mask = nm_mask(torch.Size([8, 5]), 2, 4, torch.Generator().manual_seed(1), input_dim=0)
    assert torch.all(mask.t().reshape(5, 2, 4).sum(dim=-1) == 2)

    class InOutCell(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w_in_out = torch.nn.Parameter(torch.randn(8, 12))  # (in, out), used as z @ W
            self.w_out_in = torch.nn.Parameter(torch.randn(8, 12))  # (out, in), used as z @ W.T

        def mask_input_dims(self):
            return {"w_in_out": 0}

    cell = InOutCell()
    masks = MaskSet(cell, MaskSpec(mode="distinct", kind="nm", n=2, m=4), num_masks=2)
    for i in range(2):
        assert torch.all(masks.mask(i, "w_in_out").t().reshape(12, 2, 4).sum(dim=-1) == 2)
        assert torch.all(masks.mask(i, "w_out_in").reshape(8, 3, 4).sum(dim=-1) == 2)
    cell.mask_input_dims = lambda: {"nope": 0}
    with pytest.raises(ValueError, match=r"mask_input_dims\(\) of InOutCell names \['nope'\]"):
        MaskSet(cell, MaskSpec(mode="distinct", kind="nm"), num_masks=2)
    cell.mask_input_dims = lambda: {"w_in_out": 2}  # refused for any kind, not only the one that reads it
    with pytest.raises(ValueError, match=r"gives \{'w_in_out': 2\}: the input dim is 1, or 0"):
        MaskSet(cell, MaskSpec(mode="distinct", sparsity=0.5), num_masks=2)
    with pytest.raises(ValueError, match=r"input_dim=2 for a weight of shape \(8, 5\): choices are 1, or 0"):
        nm_mask(torch.Size([8, 5]), 2, 4, torch.Generator(), input_dim=2)
    with pytest.raises(ValueError, match=r"input_dim=0 for a weight of shape \(4, 8, 3\)"):
        nm_mask(torch.Size([4, 8, 3]), 2, 4, torch.Generator(), input_dim=0)


def test_nm_that_does_not_divide_the_input_channels_is_rejected():
    with pytest.raises(ValueError, match=r"m=4 does not fit the tensor of shape \(5, 3\).*input channels"):
        nm_mask(torch.Size([5, 3]), 2, 4, torch.Generator())
    with pytest.raises(ValueError, match="input channels"):
        build_block(lambda: TanhCell(dim=3), dict(mode="tied", mask=dict(mode="distinct", kind="nm")))


def test_channel_masks_are_gone_with_the_reason():
    with pytest.raises(ValueError, match=r"mask kind 'channel' was removed.*choose one of \('unstructured', 'nm'\)"):
        MaskSpec(mode="distinct", kind="channel", sparsity=0.5)


def test_disjoint_masks_partition_the_weight_exactly():
    parts = disjoint_masks(torch.Size([7, 5, 3]), 4, torch.Generator().manual_seed(0))
    total = torch.stack(parts).sum(dim=0)
    assert torch.all(total == 1)  # every entry kept by exactly one layer
    assert sorted(int(p.sum()) for p in parts) == [26, 26, 26, 27]  # 105 entries, as even as possible
    block = build_block(lambda: ConvCell(), dict(mode="tied", depth=4, mask=dict(mode="disjoint")))
    stacked = torch.stack([block.masks.mask(i, "conv.weight") for i in range(4)])
    assert torch.all(stacked.sum(dim=0) == 1)
    with pytest.raises(ValueError, match="disjoint.*needs kind 'unstructured' and sparsity 0"):
        MaskSpec(mode="disjoint", sparsity=0.5)


def test_rescale_divides_kept_weights_by_the_density():
    torch.manual_seed(0)
    plain = build_block(lambda: ConvCell(), dict(mode="tied", depth=2, mask=dict(mode="distinct", sparsity=0.75)))
    scaled = build_block(lambda: ConvCell(), dict(mode="tied", depth=2,
                                                  mask=dict(mode="distinct", sparsity=0.75, rescale=True)))
    scaled.load_state_dict(plain.state_dict())
    w_plain = plain._layer_weights(1)[0]["conv.weight"]
    w_scaled = scaled._layer_weights(1)[0]["conv.weight"]
    assert torch.allclose(w_scaled, w_plain * 4)  # density 0.25


def test_rescale_follows_masks_restored_from_a_checkpoint():
    """A checkpoint's masks replace the drawn ones on load, and the 1/density scales follow them (a mask of another
    density, as a checkpoint of another kind or version may hold, must not keep the drawn mask's scale)."""
    cell = lambda: nn.Linear(4, 4, bias=False)  # noqa: E731 - 16 weights
    block = build_block(cell, dict(mode="tied", depth=2, mask=dict(mode="distinct", sparsity=0.75, rescale=True)))
    assert block.masks.scales[(1, "weight")] == 4.0
    state = block.state_dict()
    key = next(k for k in state if k.endswith("m1__weight"))
    state[key] = torch.zeros(4, 4)
    state[key][:, :2] = 1.0  # 8 of 16 kept: density 0.5
    block.load_state_dict(state)
    assert block.masks.scales[(1, "weight")] == 2.0 and block.masks.scales[(0, "weight")] == 4.0
    weight = block.cells[0].weight
    assert torch.allclose(block._layer_weights(2)[1]["weight"], weight * state[key] * 2.0)


def test_params_used_counts_the_union_of_kept_entries():
    cell = lambda: nn.Linear(4, 4, bias=False)  # noqa: E731 - 16 weights, nothing else
    shared = build_block(cell, dict(mode="tied", depth=4, mask=dict(mode="shared", sparsity=0.5)))
    assert shared.param_counts() == {"unique": 16, "dense": 64, "nonzero": 32, "used": 8}
    disjoint = build_block(cell, dict(mode="tied", depth=4, mask=dict(mode="disjoint")))
    assert disjoint.param_counts() == {"unique": 16, "dense": 64, "nonzero": 16, "used": 16}
    distinct = build_block(cell, dict(mode="tied", depth=2, mask=dict(mode="distinct", sparsity=0.5, seed=3)))
    union = (distinct.masks.mask(0, "weight") + distinct.masks.mask(1, "weight") > 0).sum()
    assert distinct.param_counts()["used"] == int(union)
    plain = build_block(cell, dict(mode="tied", depth=4))
    assert plain.param_counts()["used"] == 16
    # W is normed before it is masked: sigma of all of W scales what the mask keeps (every stored entry is used);
    # a weight norm reads each output row whole (every entry of a row the mask keeps any of)
    spectral = build_block(cell, dict(mode="tied", depth=4, norm="spectral", mask=dict(mode="shared", sparsity=0.75,
                                                                                         seed=1)))
    assert spectral.param_counts()["used"] == 16
    normed = build_block(cell, dict(mode="tied", depth=4, norm="weight", mask=dict(mode="shared", sparsity=0.75,
                                                                                   seed=1)))
    rows = int((normed.masks.mask(0, "weight") != 0).any(dim=1).sum())
    assert rows < 4 and normed.param_counts()["used"] == 4 + 4 * rows  # the 4 row gains, and the rows kept
    torch.manual_seed(0)
    tanh = build_block(lambda: TanhCell(6), dict(mode="tied", depth=3, norm="weight",
                                                 mask=dict(mode="shared", sparsity=0.5)))
    x = torch.randn(3, 6, dtype=torch.float64)
    before = tanh(x)[0]
    with torch.no_grad():  # only entries the mask removes
        tanh.cells[0].W[tanh.masks.mask(0, "W") == 0] *= 3.0
    assert not torch.allclose(tanh(x)[0], before)


def test_params_used_under_a_weight_norm_counts_the_output_units_the_cell_declares():
    """A weight stored (in, out) (``mask_input_dims``) has its output units along dim 1: a weight norm reads each
    column whole, so ``used`` counts every entry of a column the mask keeps any of (and one gain per column)."""
    torch.manual_seed(0)
    block = build_block(lambda: InOutCell(dim=8), dict(mode="tied", depth=4, norm="weight",
                                                       mask=dict(mode="shared", sparsity=0.9, seed=1)))
    kept = {name: block.masks.mask(0, name) != 0 for name in ("W", "U")}
    columns, rows = int(kept["W"].any(dim=0).sum()), int(kept["U"].any(dim=1).sum())
    assert columns < 8 and columns != int(kept["W"].any(dim=1).sum())  # the two readings differ here
    assert block.param_counts()["used"] == 8 + 8 + 8 * columns + 8 * rows + 8  # gains, columns, rows, b


def test_masks_differ_between_seeds_and_come_back_from_a_state_dict():
    a = build_block(lambda: ConvCell(), dict(mode="tied", depth=2, mask=dict(mode="distinct", sparsity=0.5, seed=0)))
    b = build_block(lambda: ConvCell(), dict(mode="tied", depth=2, mask=dict(mode="distinct", sparsity=0.5, seed=1)))
    assert not torch.equal(a.masks.mask(0, "conv.weight"), b.masks.mask(0, "conv.weight"))
    b.load_state_dict(a.state_dict())  # a checkpoint carries the masks it trained with
    assert torch.equal(a.masks.mask(1, "conv.weight"), b.masks.mask(1, "conv.weight"))


def test_distinct_masks_differ_and_shared_are_identical():
    cell = ConvCell()
    distinct = MaskSet(cell, MaskSpec(mode="distinct", sparsity=0.5), num_masks=4)
    shared = MaskSet(cell, MaskSpec(mode="shared", sparsity=0.5), num_masks=4)
    assert distinct.names == ["conv.weight"]  # not the bias, not the GroupNorm
    masks = [distinct.mask(i, "conv.weight") for i in range(4)]
    assert all(not torch.equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1:])
    assert shared.num_masks == 1
    assert all(torch.equal(shared.mask(0, "conv.weight"), shared.mask(i, "conv.weight")) for i in range(4))
    # Same seed, same masks: masks are reproducible buffers.
    again = MaskSet(cell, MaskSpec(mode="distinct", sparsity=0.5), num_masks=4)
    assert torch.equal(again.mask(3, "conv.weight"), masks[3])
    assert "m3__conv_weight" in distinct.state_dict()


def test_shared_weight_gradient_is_the_sum_of_masked_layer_gradients():
    block = build_block(ConvCell, dict(mode="tied", depth=3, mask=dict(mode="distinct", sparsity=0.5)))
    cell = block.cells[0]
    x = torch.randn(2, 8, 6, 6)
    z, _ = block(x)
    z.square().sum().backward()

    # Reference: unroll by hand with an independent leaf per layer standing for W * M_i.
    W = cell.conv.weight.detach()
    leaves = [(W * block.masks.mask(i, "conv.weight")).requires_grad_() for i in range(3)]
    ref = torch.zeros_like(x)
    for leaf in leaves:
        ref = torch.relu(cell.norm(nn.functional.conv2d(ref, leaf, cell.conv.bias, padding=1) + x))
    ref.square().sum().backward()
    expected = sum(leaf.grad * block.masks.mask(i, "conv.weight") for i, leaf in enumerate(leaves))
    torch.testing.assert_close(ref, z)
    torch.testing.assert_close(cell.conv.weight.grad, expected)


def test_masked_entries_stay_zero_in_effect_and_untouched_after_optimiser_steps():
    block = build_block(ConvCell, dict(mode="tied", depth=2, mask=dict(mode="shared", sparsity=0.7)))
    mask = block.masks.mask(0, "conv.weight")
    w0 = block.cells[0].conv.weight.detach().clone()
    opt = torch.optim.SGD(block.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 8, 5, 5)
    for _ in range(5):
        opt.zero_grad()
        z, _ = block(x)
        z.square().mean().backward()
        assert torch.all(block.cells[0].conv.weight.grad[mask == 0] == 0)
        opt.step()
    w = block.cells[0].conv.weight.detach()
    assert torch.equal(w[mask == 0], w0[mask == 0])  # never received a gradient
    assert not torch.equal(w[mask == 1], w0[mask == 1])  # the kept ones did learn
    effective = block._layer_weights(1)[0]["conv.weight"]
    assert torch.all(effective[mask == 0] == 0)


def test_mask_spec_validation_names_bad_values_and_choices():
    with pytest.raises(ValueError, match=r"mask kind 'random'.*unstructured.*nm"):
        MaskSpec(mode="distinct", kind="random")
    with pytest.raises(ValueError, match=r"mask mode 'per_layer'.*none.*shared.*distinct"):
        MaskSpec(mode="per_layer")
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"sparsity={bad}"):
            MaskSpec(mode="distinct", sparsity=bad)
    with pytest.raises(ValueError, match="contradicts N:M 2:4"):
        MaskSpec(mode="distinct", kind="nm", sparsity=0.3)
    assert MaskSpec(mode="distinct", kind="nm", sparsity=0.5).effective_sparsity == 0.5
    assert not MaskSpec(mode="distinct", sparsity=0.0).active
