"""Equilibrium health: spectral norm at z*, gradient cosine, thresholds and the 'not at equilibrium' flags."""

import math
import re

import pytest
import torch

from support.cells import TanhCell
from tiedlab.core import (Block, BlockSpec, build_block, EquilibriumThresholds, equilibrium_flags, gradient_cosine, residual_metrics,
                          spectral_norm_at)
from tiedlab.core.solvers import anderson

AT_1 = EquilibriumThresholds(spectral_norm=1.0)


# ----------------------------------------------------------------- spectral_norm_at
def test_spectral_norm_of_a_linear_cell_matches_the_matrix_norm():
    A = torch.randn(16, 16, dtype=torch.float64)
    x = torch.randn(5, 16, dtype=torch.float64)
    f = lambda z: z @ A.T + x  # noqa: E731
    exact = torch.linalg.matrix_norm(A, 2)
    est = spectral_norm_at(f, torch.randn_like(x), generator=torch.Generator().manual_seed(1))
    assert est.shape == (5,)
    torch.testing.assert_close(est, exact.expand(5), rtol=0.02, atol=0)
    # Power iteration approaches sigma_max from below, and more iterations never lose ground here.
    rough = spectral_norm_at(f, torch.randn_like(x), iters=2, generator=torch.Generator().manual_seed(1))
    assert torch.all(rough <= est + 1e-12) and torch.all(est <= exact * (1 + 1e-9))
    assert (rough < 0.98 * exact).any()


def test_spectral_norm_is_per_sample():
    # Sample 0 sees a map with norm 3, sample 1 one with norm 0.5 (a per-sample diagonal scaling).
    A = torch.randn(8, 8, dtype=torch.float64)
    A = A / torch.linalg.matrix_norm(A, 2)
    scale = torch.tensor([[3.0], [0.5]], dtype=torch.float64)
    est = spectral_norm_at(lambda z: scale * (z @ A.T), torch.zeros(2, 8, dtype=torch.float64), iters=60)
    torch.testing.assert_close(est, torch.tensor([3.0, 0.5], dtype=torch.float64), rtol=1e-6, atol=0)


def test_spectral_norm_works_under_no_grad_and_leaves_parameters_alone():
    cell = TanhCell(dim=8, scale=0.7)
    x = torch.randn(4, 8, dtype=torch.float64)
    z = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)  # even a z with a graph is only read
    with torch.no_grad():
        a = spectral_norm_at(lambda v: cell(v, x), z, generator=torch.Generator().manual_seed(3))
    b = spectral_norm_at(lambda v: cell(v, x), z, generator=torch.Generator().manual_seed(3))
    assert not a.requires_grad and not b.requires_grad
    torch.testing.assert_close(a, b)
    assert all(p.grad is None for p in cell.parameters()) and z.grad is None
    # tanh' <= 1, so ||diag(tanh') W|| <= ||W|| = 0.7.
    assert torch.all(a <= 0.7 + 1e-9) and torch.all(a > 0.1)


def test_spectral_norm_of_a_map_that_ignores_z_is_zero_and_bad_iters_are_named():
    x = torch.randn(3, 4)
    assert torch.equal(spectral_norm_at(lambda z: x.clone(), torch.zeros(3, 4)), torch.zeros(3))
    with pytest.raises(ValueError, match=r"iters=0 must be an integer >= 1"):
        spectral_norm_at(lambda z: z, torch.zeros(3, 4), iters=0)
    with pytest.raises(ValueError, match=r"f\(z\) has shape \(3,\) but z has \(3, 4\)"):
        spectral_norm_at(lambda z: z.sum(1), torch.zeros(3, 4))


# ----------------------------------------------------------------- gradient_cosine
def test_gradient_cosine_is_the_cosine_of_the_concatenated_gradients():
    a = [torch.randn(3, 2), torch.randn(4)]
    b = [torch.randn(3, 2), torch.randn(4)]
    flat_a, flat_b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    expected = torch.nn.functional.cosine_similarity(flat_a.double(), flat_b.double(), dim=0).item()
    assert gradient_cosine(a, b) == pytest.approx(expected, abs=1e-12)
    assert gradient_cosine(a, [2 * t for t in a]) == pytest.approx(1.0, abs=1e-12)
    assert gradient_cosine(a, [-t for t in a]) == pytest.approx(-1.0, abs=1e-12)


def test_gradient_cosine_counts_none_as_zero_and_is_nan_for_a_zero_gradient():
    g = torch.randn(5)
    h = torch.randn(3)
    # None for the second parameter on one side: only the first parameter contributes to the dot product.
    assert gradient_cosine([g, h], [g, None]) == pytest.approx(g.norm().item() / math.hypot(g.norm(), h.norm()))
    assert math.isnan(gradient_cosine([g, h], [None, None]))
    assert math.isnan(gradient_cosine([g], [torch.zeros(5)]))
    with pytest.raises(ValueError, match=r"2 and 1 entries"):
        gradient_cosine([g, h], [g])
    with pytest.raises(ValueError, match=r"gradient 1 has shapes \(3,\) and \(4,\)"):
        gradient_cosine([g, h], [g, torch.randn(4)])


# ----------------------------------------------------------------- thresholds and flags
@pytest.mark.parametrize("field, value, what", [
    ("rel_residual", 0.0, "a finite number > 0"),
    ("converged_fraction", 1.5, r"in \[0, 1\]"),
    ("grad_cosine", -2.0, r"in \[-1, 1\]"),
    ("spectral_norm", float("inf"), "a finite number > 0"),
    ("rel_residual", "0.01", "a finite number > 0"),
])
def test_thresholds_reject_bad_values_by_name(field, value, what):
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r}") + f" must be {what}"):
        EquilibriumThresholds(**{field: value})


def test_flags_name_each_failed_missing_or_nan_metric():
    good = dict(rel_residual=1e-3, converged_fraction=1.0, grad_cosine=0.999, spectral_norm=0.8)
    assert equilibrium_flags(good, AT_1) == []
    assert equilibrium_flags(dict(good, spectral_norm=3.0)) == []  # spectral norm unchecked by default
    bad = dict(rel_residual=0.2, converged_fraction=torch.tensor(0.5), grad_cosine=float("nan"))
    flags = equilibrium_flags(bad, AT_1)
    assert len(flags) == 4
    assert flags[0].startswith("rel_residual 0.2 > 0.01")
    assert flags[1].startswith("converged_fraction 0.5 < 0.9") and "relative residual <= 0.01" in flags[1]
    assert flags[2].startswith("grad_cosine is nan")
    assert flags[3].startswith("spectral_norm not measured")
    # A threshold set to None is not checked, so its metric may be missing.
    unchecked = EquilibriumThresholds(grad_cosine=None)
    assert equilibrium_flags(dict(rel_residual=1e-3, converged_fraction=0.95), unchecked) == []
    with pytest.raises(ValueError, match=r"spectral_norm is a tensor of shape \(4,\)"):
        equilibrium_flags(dict(good, spectral_norm=torch.ones(4)), AT_1)


# ----------------------------------------------------------------- a DEQ at and off equilibrium
def _health(block, x):
    """Residual metrics and the largest spectral norm at the block's fixed point, measured in eval style."""
    cell = block.cells[0]
    with torch.no_grad():
        z, stats = block(x)
        f = lambda v: cell(v, x)  # noqa: E731
        metrics = residual_metrics(f(z), z)
        metrics["spectral_norm"] = spectral_norm_at(f, z).max()
    return metrics, stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flags_a_non_contractive_cell_and_pass_a_contractive_one(seed):
    torch.manual_seed(seed)
    x = torch.randn(32, 16, dtype=torch.float64)
    ok, ok_stats = _health(Block(lambda: TanhCell(dim=16, scale=0.9), BlockSpec(mode="deq")), x)
    assert ok_stats.converged == 1.0
    assert equilibrium_flags(dict(ok, grad_cosine=1.0), AT_1) == []
    # ||W||_2 = 8: the default budget (Anderson, 30 steps, tol 1e-3) leaves many samples far from a fixed point.
    bad, bad_stats = _health(Block(lambda: TanhCell(dim=16, scale=8.0), BlockSpec(mode="deq")), x)
    assert bad_stats.converged < 0.9
    flags = equilibrium_flags(dict(bad, grad_cosine=1.0), AT_1)
    assert [f.split()[0] for f in flags] == ["rel_residual", "converged_fraction", "spectral_norm"], flags


def _exact_implicit_grads(cell, x, c):
    """Gradient of sum(c * z*) to the cell's parameters with z* solved to 1e-13 and the adjoint
    (I - J^T) y = c solved densely (J = df/dz at z*, the whole batch as one matrix)."""
    f = lambda v: cell(v, x)  # noqa: E731
    with torch.no_grad():
        z_star, stats = anderson(f, torch.zeros_like(x), max_iter=500, tol=1e-13, stop_mode="abs")
    assert stats.converged == 1.0
    J = torch.autograd.functional.jacobian(f, z_star).reshape(x.numel(), x.numel())
    y = torch.linalg.solve(torch.eye(x.numel(), dtype=x.dtype) - J.T, c.flatten()).view_as(x)
    return torch.autograd.grad(f(z_star), list(cell.parameters()), y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_budget_ift_gradient_matches_the_exact_one_on_a_contractive_cell(seed):
    torch.manual_seed(seed)
    block = Block(lambda: TanhCell(dim=12, scale=0.9), BlockSpec(mode="deq"))
    assert block.spec.grad.mode == "ift"
    x = torch.randn(6, 12, dtype=torch.float64)
    c = torch.randn(6, 12, dtype=torch.float64)
    z, _ = block(x)
    (c * z).sum().backward()
    budgeted = [p.grad for p in block.cells[0].parameters()]
    exact = _exact_implicit_grads(block.cells[0], x, c)
    assert gradient_cosine(budgeted, exact) >= 0.99


class _OnceDifferentiableTanh(torch.autograd.Function):
    """tanh whose backward cannot itself be differentiated (like fused attention kernels on CPU)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


def test_spectral_norm_needs_no_double_backward_and_matches_the_exact_jacobian_of_a_nonlinear_map():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(12, 12, generator=g, dtype=torch.float64) / 3
    x = torch.randn(4, 12, generator=g, dtype=torch.float64)
    z = torch.randn(4, 12, generator=g, dtype=torch.float64)

    def f(v):
        return _OnceDifferentiableTanh.apply(v @ W.T + x)

    est = spectral_norm_at(f, z, iters=60, generator=torch.Generator().manual_seed(0))
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: torch.tanh(v @ W.T + x[i]), z[i])
        exact = torch.linalg.matrix_norm(jac, 2).item()
        assert abs(est[i].item() - exact) <= 1e-3 * exact, (i, est[i].item(), exact)


def test_residual_metrics_count_each_system_the_solver_solves():
    """Per position under sample_dims=2: one position 5x off the threshold in every sequence is 1 of 64 systems
    unconverged, not hidden in its sequence's norm (per sequence it would pass: about 0.05 / 8)."""
    z = torch.randn(4, 64, 16)
    fz = z.clone()
    fz[:, 10] = z[:, 10] * (1 + 0.05 / (1 - 0.05))  # relative residual |fz - z| / |fz| = 0.05 at position 10
    per_sequence = residual_metrics(fz, z, 1e-2)
    per_position = residual_metrics(fz, z, 1e-2, sample_dims=2)
    assert per_sequence["converged_fraction"] == 1.0 and per_sequence["rel_residual"] < 1e-2
    assert per_position["converged_fraction"] == pytest.approx(63 / 64)
    assert per_position["rel_residual"] == pytest.approx(0.05 / 64, rel=1e-4)
    with pytest.raises(ValueError, match=r"sample_dims=4 must be an integer in \[1, 3\]"):
        residual_metrics(fz, z, sample_dims=4)


class _SlowPosition(torch.nn.Module):
    """f(z) = c_t z + x per position t of a (B, T, d) state: c = 0.1, but 0.97 at position 10 (slow to converge)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.register_buffer("c", torch.full((16, 1), 0.1).index_fill_(0, torch.tensor([10]), 0.97))

    def forward(self, z, x):
        return self.w * self.c * z + x


def test_a_deq_solved_per_position_is_judged_per_position():
    """``Block.equilibrium`` measures the systems its solver solves (``sample_dims=2``: positions): the one slow
    position of each sequence is unconverged after 8 iterations, which a per-sequence residual hides."""
    solver = dict(name="fixed_point", max_iter=8, tol=1e-12, options={"sample_dims": 2})
    block = build_block(_SlowPosition, dict(mode="deq", solver=solver)).eval()
    x = torch.ones(3, 16, 4)
    x[:, 10] = 0.03  # z* = 1 there, about as large as elsewhere (1.11): its residual does not dominate the norm
    health = block.equilibrium(x, power_iters=2, rel_residual=1e-2)
    assert health["converged_fraction"] == pytest.approx(15 / 16)
    per_sequence = build_block(_SlowPosition, dict(mode="deq", solver={**solver, "options": {}})).eval()
    assert per_sequence.equilibrium(x, power_iters=2, rel_residual=1e-2)["converged_fraction"] == 1.0
