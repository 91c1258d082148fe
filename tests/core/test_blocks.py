"""Block modes, test-time depth and compute, the cycle DEQ, parameter counts, stats and validation."""

import copy

import pytest
import torch

from support.cells import CtxWeightCell, InOutCell, TanhCell
from tiedlab.core import Block, BlockSpec, WeightNorm, build_block, jacobian_frobenius, model_param_counts

make = lambda: TanhCell(dim=8, scale=0.6)  # noqa: E731


def test_tied_applies_one_cell_depth_times():
    block = build_block(make, dict(mode="tied", depth=5))
    x = torch.randn(3, 8, dtype=torch.float64)
    z, stats = block(x)
    ref = torch.zeros_like(x)
    for _ in range(5):
        ref = block.cells[0](ref, x)
    torch.testing.assert_close(z, ref)
    assert stats.nfe_forward == 5 == stats.nfe_backward == len(stats.rel_trace)
    assert stats.rel_trace[-1] < stats.rel_trace[0]  # the contractive cell settles


def test_explicit_uses_independent_cells_in_sequence():
    block = build_block(make, dict(mode="explicit", depth=3))
    assert len(block.cells) == 3
    assert not torch.equal(block.cells[0].W, block.cells[1].W)
    x = torch.randn(2, 8, dtype=torch.float64)
    z, _ = block(x)
    ref = torch.zeros_like(x)
    for cell in block.cells:
        ref = cell(ref, x)
    torch.testing.assert_close(z, ref)


def test_unique_params_of_tied_do_not_grow_with_depth_and_explicit_grows_l_fold():
    per_cell = sum(p.numel() for p in make().parameters())
    for depth in (1, 4, 16):
        tied = build_block(make, dict(mode="tied", depth=depth)).param_counts()
        explicit = build_block(make, dict(mode="explicit", depth=depth)).param_counts()
        assert tied == {"unique": per_cell, "dense": depth * per_cell, "nonzero": depth * per_cell,
                        "used": per_cell}
        assert explicit == {"unique": depth * per_cell, "dense": depth * per_cell, "nonzero": depth * per_cell,
                            "used": depth * per_cell}
    masked = build_block(make, dict(mode="tied", depth=4, mask=dict(mode="distinct", sparsity=0.25))).param_counts()
    masked_weights = 2 * 64  # W and U, not the bias
    assert masked["unique"] == per_cell
    assert masked["nonzero"] == 4 * (per_cell - round(0.25 * 64) * 2)
    assert masked_weights < per_cell


def test_model_param_counts_add_stem_and_head_once():
    model = torch.nn.ModuleDict({"stem": torch.nn.Linear(8, 8), "block": build_block(make, dict(mode="tied", depth=3))})
    counts = model_param_counts(model)
    per_cell = sum(p.numel() for p in make().parameters())
    assert counts["params/unique"] == 72 + per_cell
    assert counts["params/dense"] == 72 + 3 * per_cell


def test_test_time_depth_for_tied():
    block = build_block(make, dict(mode="tied", depth=2, eval_depth=6))
    x = torch.randn(2, 8, dtype=torch.float64)
    _, train_stats = block(x)
    block.eval()
    with torch.no_grad():
        z, eval_stats = block(x)
    assert (train_stats.nfe_forward, eval_stats.nfe_forward) == (2, 6)
    ref = torch.zeros_like(x)
    for _ in range(6):
        ref = block.cells[0](ref, x)
    torch.testing.assert_close(z, ref)


def test_deq_eval_budget_differs_from_training():
    block = build_block(make, dict(mode="deq", solver=dict(name="fixed_point", max_iter=3, tol=0.0, eval_max_iter=40, eval_tol=1e-10)))
    x = torch.randn(4, 8, dtype=torch.float64)
    _, train_stats = block(x)
    block.eval()
    with torch.no_grad():
        _, eval_stats = block(x)
    assert train_stats.nfe_forward == 3 + 1  # solver steps + the one step that carries the gradient
    assert 3 < eval_stats.nfe_forward <= 40
    assert eval_stats.rel_residual < train_stats.rel_residual
    assert eval_stats.converged == 1.0 and train_stats.converged == 0.0


def test_deq_output_is_a_fixed_point_of_the_cell():
    block = build_block(make, dict(mode="deq", solver=dict(name="broyden", tol=1e-9, max_iter=100)))
    x = torch.randn(5, 8, dtype=torch.float64)
    z, stats = block(x)
    torch.testing.assert_close(block.cells[0](z, x), z, atol=1e-7, rtol=1e-7)
    assert stats.converged == 1.0 and stats.rel_residual < 1e-9


def test_cycle_deq_with_distinct_masks_converges_and_its_ift_gradient_passes_gradcheck():
    spec = dict(mode="deq", depth=3, solver=dict(name="anderson", tol=1e-12, max_iter=300, stop_mode="abs"),
                mask=dict(mode="distinct", sparsity=0.5), grad=dict(mode="ift", tol=1e-12, max_iter=300))
    block = build_block(make, spec)
    assert block.layers == 3 and block.masks.num_masks == 3
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    z, stats = block(x)
    assert stats.converged == 1.0
    assert stats.nfe_forward % 3 == 0
    # z is a fixed point of the cycle f_3 o f_2 o f_1, and not of any single masked map.
    weights = block._layer_weights(3)
    cyc = z
    for i in range(3):
        cyc = block._run_layer(i, weights[i], cyc, x, {})
    torch.testing.assert_close(cyc, z, atol=1e-9, rtol=1e-9)
    assert (block._run_layer(0, weights[0], z, x, {}) - z).abs().max() > 1e-3

    cyc_cell = build_block(CtxWeightCell, spec | dict(mask=dict(mode="none")))
    assert cyc_cell.layers == 1  # without distinct masks the map is one cell

    # gradcheck through the cycle with respect to the input.
    block.double()
    assert torch.autograd.gradcheck(lambda x: block(x)[0], (x,), eps=1e-6, atol=1e-5)


def test_weight_norm_starts_at_the_raw_weight_and_spectral_norm_bounds_it():
    x = torch.randn(3, 8, dtype=torch.float64)
    plain = build_block(make, dict(mode="tied", depth=2))
    wn = build_block(make, dict(mode="tied", depth=2, norm="weight"))
    wn.cells.load_state_dict(plain.cells.state_dict())
    wn.norms[0].norms["W"].gain.data = wn.cells[0].W.detach().norm(dim=1, keepdim=True)
    wn.norms[0].norms["U"].gain.data = wn.cells[0].U.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close(wn(x)[0], plain(x)[0])
    assert wn.param_counts()["unique"] == plain.param_counts()["unique"] + 16

    sn = build_block(lambda: TanhCell(dim=8, scale=3.0), dict(mode="deq", norm="spectral", solver=dict(tol=1e-6, max_iter=100)))
    for _ in range(30):  # power iteration converges over forwards
        sn(x)
    W_eff = sn._layer_weights(1)[0]["W"]
    assert abs(torch.linalg.matrix_norm(W_eff.detach(), 2).item() - 1.0) < 1e-3


def test_weight_norm_normalises_each_output_unit_along_the_dim_the_cell_declares():
    """A weight the cell stores (in, out) (``mask_input_dims``, as GPT-2's Conv1D) is normed per output unit, a
    column: its gain is (1, out), and scaling one output unit's weights leaves the block's function unchanged (it
    was normed per input feature, which changed it). A weight stored (out, in) keeps its rows."""
    torch.manual_seed(0)
    block = build_block(lambda: InOutCell(dim=6), dict(mode="tied", depth=3, norm="weight"))
    norms = block.norms[0].norms
    assert norms["W"].gain.shape == (1, 6) and norms["U"].gain.shape == (6, 1)
    normed = block.norms[0](block.cells[0])
    torch.testing.assert_close(normed["W"], block.cells[0].W)  # the gain starts at the output units' norms
    x = torch.randn(4, 6, dtype=torch.float64)
    before = block(x)[0]
    with torch.no_grad():
        block.cells[0].W[:, 2] *= 3.0  # output unit 2 of W (in, out)
        block.cells[0].U[1] *= 3.0  # output unit 1 of U (out, in)
    torch.testing.assert_close(block(x)[0], before)
    with pytest.raises(ValueError, match=r"out_dim=1 for a weight of shape \(4, 8, 3\): choices are 0, or 1 for a 2-d"):
        WeightNorm(torch.randn(4, 8, 3), out_dim=1)


def test_spectral_norm_holds_from_the_first_forward_in_eval_mode():
    torch.manual_seed(0)
    sn = build_block(lambda: TanhCell(dim=8, scale=3.0), dict(mode="deq", norm="spectral", solver=dict(tol=1e-6, max_iter=100)))
    sn.eval()  # no training forward has run a power-iteration step yet
    W_eff = sn._layer_weights(1)[0]["W"]
    assert abs(torch.linalg.matrix_norm(W_eff.detach(), 2).item() - 1.0) < 1e-2


@pytest.mark.parametrize("mode", ["tied", "deq"])
def test_spectral_norm_with_distinct_masks_normalises_once_per_forward(mode):
    """Every mask multiplies the same normalised weight: one power-iteration step per training forward, however
    many masks (a step per mask changed the vectors autograd had saved, and backward failed)."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, dtype=torch.float64)
    block = build_block(lambda: TanhCell(dim=8, scale=3.0), dict(
        mode=mode, depth=3, norm="spectral", mask=dict(mode="distinct", sparsity=0.5),
        solver=dict(tol=1e-8, max_iter=100)))
    norm = block.norms[0].norms["W"]
    u, v = norm.u.clone(), norm.v.clone()
    z, _ = block(x)
    z.sum().backward()  # no in-place error
    W = block.cells[0].W.detach().reshape(8, -1)
    v1 = torch.nn.functional.normalize(W.t() @ u, dim=0)
    torch.testing.assert_close(norm.v, v1)  # exactly one step from (u, v)
    torch.testing.assert_close(norm.u, torch.nn.functional.normalize(W @ v1, dim=0))
    assert not torch.equal(norm.v, v) and block.cells[0].W.grad is not None


@pytest.mark.parametrize("mode", ["tied", "deq"])
def test_two_training_forwards_with_a_spectral_norm_then_one_backward(mode):
    """Each forward differentiates through the power-iteration vectors it used (clones, as torch's spectral_norm
    does): the next training forward's in-place step no longer breaks its backward ("modified by an inplace
    operation"), and the gradient is the sum of the two forwards' own."""
    torch.manual_seed(0)
    block = build_block(lambda: TanhCell(dim=8, scale=3.0), dict(mode=mode, depth=2, norm="spectral",
                                                                  solver=dict(tol=1e-8, max_iter=100)))
    twin = copy.deepcopy(block)
    x1, x2 = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    (block(x1)[0].square().sum() + block(x2)[0].square().sum()).backward()
    twin(x1)[0].square().sum().backward()  # one backward per forward: the vectors are not stepped in between
    twin(x2)[0].square().sum().backward()
    for p, q in zip(block.parameters(), twin.parameters()):  # to rounding: one graph sums the paths in its order
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)


def test_jacobian_penalty_matches_frobenius_norm_of_linear_map():
    A = torch.randn(6, 6, dtype=torch.float64)
    z0 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    f0 = z0 @ A.T
    est = jacobian_frobenius(f0, z0, samples=4000)
    exact = (A ** 2).sum() / 6  # ||J||_F^2 per element of z: 4 samples x ||A||_F^2 / (4 * 6)
    assert abs(est.item() - exact.item()) / exact.item() < 0.05
    assert est.requires_grad is False or est.grad_fn is not None

    block = build_block(make, dict(mode="deq", jacobian_samples=2))
    z, stats = block(torch.randn(3, 8, dtype=torch.float64))
    assert stats.jacobian_loss is not None and stats.jacobian_loss.grad_fn is not None
    (z.sum() + stats.jacobian_loss).backward()
    assert block.cells[0].W.grad is not None
    block.eval()
    with torch.no_grad():
        assert block(torch.randn(3, 8, dtype=torch.float64))[1].jacobian_loss is None


def test_stats_dict_has_the_engine_keys():
    _, stats = build_block(make, dict(mode="deq"))(torch.randn(2, 8, dtype=torch.float64))
    d = stats.as_dict()
    assert {"core/nfe_forward", "core/nfe_backward", "core/rel_residual", "core/abs_residual", "core/converged",
            "core/sparsity", "core/adjoint_rel_residual"} <= set(d)
    masked = build_block(make, dict(mode="tied", depth=2, mask=dict(mode="shared", sparsity=0.5)))
    _, masked_stats = masked(torch.randn(2, 8, dtype=torch.float64))
    # the masked weights' zero fraction: W and U (8x8 each) at sparsity 0.5, the bias unmasked
    assert masked_stats.as_dict()["core/sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize("bad,match", [
    (dict(mode="implicit"), r"block mode 'implicit'.*explicit.*tied.*deq"),
    (dict(depth=0), r"depth=0 must be an integer >= 1"),
    (dict(solver=dict(name="newton")), r"unknown solver 'newton'; valid solvers"),
    (dict(grad=dict(mode="backprop")), r"grad mode 'backprop'.*ift.*phantom.*onestep"),
    (dict(mask=dict(mode="distinct", kind="block")), r"mask kind 'block'"),
    (dict(mask=dict(mode="distinct", sparsity=1.0)), r"sparsity=1.0 must be in \[0, 1\)"),
    (dict(deepth=3), r"unknown key\(s\) \['deepth'\] in block; valid keys: .*depth"),
    (dict(mask=dict(sparsty=0.5)), r"unknown key\(s\) \['sparsty'\] in block.mask"),
    (dict(grad=dict(step=3)), r"unknown key\(s\) \['step'\] in block.grad"),
    (dict(solver=dict(name="fixed_point", options=dict(memory=3))), r"no option\(s\) \['memory'\]"),
    (dict(mode="deq", eval_depth=4), r"eval_depth=4 is only meaningful for mode 'tied'"),
    (dict(norm="batch"), r"norm 'batch'.*none.*weight.*spectral"),
    (dict(stop_mode="max"), r"unknown key\(s\) \['stop_mode'\] in block"),
    (dict(solver=dict(stop_mode="max")), r"stop_mode='max'"),
    (dict(solver=dict(tol=1e-3, max_iter=0)), r"solver max_iter=0 must be an integer >= 1"),
    (dict(grad=dict(options=dict(memory=3)), solver=dict(name="fixed_point")), r"no option\(s\) \['memory'\]"),
    (dict(solver="anderson"), r"block solver='anderson' must be a SolverSpec"),
    (dict(solver=dict(tol=float("inf"))), r"solver tol=inf must be a finite number >= 0"),
    (dict(grad=dict(tol=-1.0)), r"grad tol=-1.0 must be a finite number >= 0"),
    (dict(solver=dict(options=dict(beta=0.0))), r"solver option beta=0.0 must be in \(0, 1\]"),
    (dict(solver=dict(options=dict(lam=-1e-3))), r"solver option lam=-0.001 must be a finite number > 0"),
    (dict(solver=dict(name="broyden", options=dict(eps=0.0))), r"solver option eps=0.0 must be a finite number > 0"),
    (dict(solver=dict(name="fixed_point", options=dict(damping=1.5))), r"solver option damping=1.5 must be in"),
    (dict(grad=dict(solver="anderson", options=dict(memory=0))), r"solver option memory=0 must be an integer >= 1"),
    (dict(mode="deq", norm="spectral", mask=dict(mode="distinct", sparsity=0.5, rescale=True)),
     r"deq block with norm 'spectral' and a rescaled mask"),
])
def test_invalid_specs_raise_value_errors_naming_value_and_choices(bad, match):
    with pytest.raises(ValueError, match=match):
        BlockSpec.from_dict(bad)


def test_spec_round_trips_and_explicit_overrides_win():
    spec = BlockSpec.from_dict(dict(mode="deq", depth=3, mask=dict(mode="distinct", sparsity=0.5)), depth=5)
    assert spec.depth == 5 and spec.mask.sparsity == 0.5
    assert BlockSpec.from_dict(spec.as_dict()) == spec
    block = Block(make, spec.as_dict())
    assert block.spec == spec
    assert "mask=distinct/unstructured@0.5" in repr(block)


def test_state_dict_round_trip_restores_masks_and_weights():
    spec = dict(mode="tied", depth=3, mask=dict(mode="distinct", sparsity=0.5, seed=1))
    a = build_block(make, spec)
    b = build_block(make, spec | dict(mask=dict(mode="distinct", sparsity=0.5, seed=2)))
    assert not torch.equal(a.masks.mask(0, "W"), b.masks.mask(0, "W"))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    x = torch.randn(2, 8, dtype=torch.float64)
    torch.testing.assert_close(a(x)[0], b(x)[0])


def test_spectral_norm_under_bf16_autocast_is_the_full_precision_one():
    """A GPU run trains under bf16 autocast: sigma is computed in the weight's precision there too (from bf16
    products its dot with the float32 vectors failed, and sigma would be off by ~1e-2)."""
    torch.manual_seed(0)
    block = build_block(lambda: TanhCell(dim=8, scale=3.0, dtype=torch.float32), dict(mode="tied", depth=2, norm="spectral"))
    plain = copy.deepcopy(block)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        normed = block.norms[0](block.cells[0])
    expected = plain.norms[0](plain.cells[0])
    for name in expected:
        assert normed[name].dtype == torch.float32
        torch.testing.assert_close(normed[name], expected[name], rtol=0, atol=0)


def test_a_deq_under_bf16_autocast_solves_in_its_weights_precision():
    """Under a GPU run's bf16 autocast a DEQ's solves run in float32 (in bf16 neither the forward iterates nor the
    adjoint get below ~1e-3 and every solve ran to its budget): the same fixed point, NFE and gradient as without
    autocast, from a bf16 input (the stem's output under autocast)."""
    torch.manual_seed(0)
    block = build_block(lambda: TanhCell(dim=16, scale=0.9, dtype=torch.float32),
                        dict(mode="deq", solver=dict(tol=1e-5, max_iter=60), grad=dict(mode="ift", tol=1e-5, max_iter=60)))
    x = torch.randn(4, 16)
    z, stats = block(x)
    z.square().sum().backward()
    grad = block.cells[0].W.grad.clone()
    block.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_amp, stats_amp = block(x.bfloat16().float())
        z_amp.square().sum().backward()
    assert z_amp.dtype == torch.float32 and stats_amp.converged == 1.0 and stats_amp.adjoint_rel_residual <= 1e-5
    assert stats_amp.nfe_forward == stats.nfe_forward
    torch.testing.assert_close(z_amp, z, rtol=0.02, atol=0.02)  # the input was rounded to bf16
    torch.testing.assert_close(block.cells[0].W.grad, grad, rtol=0.05, atol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_bf16_in, _ = block(x.bfloat16())  # a bf16 input is cast to the weights' precision
    assert z_bf16_in.dtype == torch.float32


class _Halve(torch.nn.Module):
    def forward(self, z, x):
        return 0.5 * z + x


def test_a_parameter_free_deq_under_autocast_solves_in_the_default_precision():
    block = build_block(_Halve, dict(mode="deq", solver=dict(tol=1e-6, max_iter=60)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, stats = block(torch.ones(2, 4, dtype=torch.bfloat16))
    assert z.dtype == torch.get_default_dtype() and stats.converged == 1.0
    torch.testing.assert_close(z, torch.full((2, 4), 2.0), rtol=1e-5, atol=1e-5)
