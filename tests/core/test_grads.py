"""DEQ backward modes: IFT is exact, phantom approaches it, one-step is cheaper and different."""

import pytest
import torch

from support.cells import CtxWeightCell, LinearCell, TanhCell
from tiedlab.core import build_block

SOLVE = dict(name="anderson", max_iter=200, tol=1e-12, stop_mode="abs")
DEQ = dict(mode="deq", solver=SOLVE)
IFT = dict(mode="ift", max_iter=200, tol=1e-12)


def test_ift_matches_closed_form_gradient_of_linear_fixed_point():
    block = build_block(lambda: LinearCell(dim=5, scale=0.6), dict(DEQ, grad=IFT))
    cell = block.cells[0]
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 5, dtype=torch.float64)
    z, _ = block(x)
    (z * c).sum().backward()

    A = cell.A.detach().clone().requires_grad_()
    B = cell.B.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    z_exact = torch.linalg.solve(torch.eye(5, dtype=torch.float64) - A, (x_ref @ B.T).T).T
    (z_exact * c).sum().backward()
    torch.testing.assert_close(z, z_exact)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(cell.A.grad, A.grad)
    torch.testing.assert_close(cell.B.grad, B.grad)


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point"])
def test_ift_passes_gradcheck_on_nonlinear_cell(solver):
    block = build_block(CtxWeightCell, dict(DEQ, solver=dict(SOLVE, name=solver, max_iter=500), grad=dict(IFT, max_iter=500)))
    W = (0.5 * torch.randn(4, 4, dtype=torch.float64) / 2).requires_grad_()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, W: block(x, W=W)[0], (x, W), eps=1e-6, atol=1e-5)


def _grads(block, x):
    block.zero_grad()
    z, stats = block(x)
    z.pow(2).sum().backward()
    return torch.cat([p.grad.flatten() for p in block.parameters()]), stats


def test_phantom_approaches_ift_and_onestep_is_cheaper_and_differs():
    torch.manual_seed(1)
    make = lambda: TanhCell(dim=8, scale=0.7)  # noqa: E731
    x = torch.randn(6, 8, dtype=torch.float64)
    ift_block = build_block(make, dict(DEQ, grad=IFT))
    state = ift_block.state_dict()
    g_ift, s_ift = _grads(ift_block, x)
    errors = []
    for steps in (1, 4, 16, 64):
        block = build_block(make, dict(DEQ, grad=dict(mode="phantom", steps=steps, tau=0.8)))
        block.load_state_dict(state)
        g, s = _grads(block, x)
        errors.append(((g - g_ift).norm() / g_ift.norm()).item())
        assert s.nfe_backward == steps
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6

    one = build_block(make, dict(DEQ, grad=dict(mode="onestep")))
    one.load_state_dict(state)
    g_one, s_one = _grads(one, x)
    assert s_one.nfe_backward == 1 < s_ift.nfe_backward
    assert ((g_one - g_ift).norm() / g_ift.norm()) > 0.05
    # The one-step gradient is still a descent-like direction for this contractive cell.
    assert torch.dot(g_one, g_ift) > 0


def _saved_tensor_count(block, x):
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z, stats = block(x)
    return count, stats


@pytest.mark.parametrize("grad", ["ift", "phantom", "onestep"])
def test_deq_memory_does_not_grow_with_solver_steps(grad):
    make = lambda: TanhCell(dim=8, scale=0.9, dtype=torch.float32)  # noqa: E731
    x = torch.randn(4, 8)
    counts = []
    for max_iter in (5, 50):
        block = build_block(make, dict(mode="deq", solver=dict(name="fixed_point", max_iter=max_iter, tol=0.0), grad=dict(mode=grad)))
        n, stats = _saved_tensor_count(block, x)
        assert stats.nfe_forward >= max_iter
        counts.append(n)
    assert counts[0] == counts[1] > 0
    # A tied block, by contrast, saves tensors for every layer.
    tied = [_saved_tensor_count(build_block(make, dict(mode="tied", depth=d)), x)[0] for d in (5, 50)]
    assert tied[1] > 5 * tied[0]


def test_ift_backward_nfe_is_recorded_when_backward_runs():
    block = build_block(lambda: TanhCell(dim=8, scale=0.7), dict(DEQ, solver=dict(SOLVE, tol=1e-8), grad=dict(mode="ift", tol=1e-8)))
    z, stats = block(torch.randn(3, 8, dtype=torch.float64))
    assert stats.nfe_backward == 0
    z.sum().backward()
    assert 2 < stats.nfe_backward < 60


class _Flip(torch.nn.Module):
    """f(z) = a z + x with a = -1.5: undamped iteration diverges (|a| > 1), damping 0.7 contracts (|1 - 0.7 * 2.5| =
    0.75), and the fixed point z* = x / 2.5 has dz*/dx = 0.4 exactly."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-1.5, dtype=torch.float64))

    def forward(self, z, x):
        return self.a * z + x


def test_the_adjoint_solves_with_the_forward_solvers_options_and_records_its_residual():
    """Without a solver of its own the adjoint is the forward solver as configured (here its damping, without which
    y = g + J^T y diverges like the forward iteration would): the exact gradient, and the adjoint's residual
    recorded; an explicit grad option overrides the forward one, and the non-converged adjoint shows."""
    solver = dict(name="fixed_point", max_iter=200, tol=1e-12, stop_mode="abs", options={"damping": 0.7})
    block = build_block(_Flip, dict(mode="deq", solver=solver, grad=dict(mode="ift", max_iter=200, tol=1e-12)))
    x = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    z, stats = block(x)
    torch.testing.assert_close(z, x.detach() / 2.5)
    assert stats.adjoint_rel_residual != stats.adjoint_rel_residual  # nan before the backward
    z.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.4))
    assert stats.adjoint_rel_residual < 1e-10 and stats.as_dict()["core/adjoint_rel_residual"] < 1e-10
    undamped = build_block(_Flip, dict(mode="deq", solver=solver,
                                       grad=dict(mode="ift", max_iter=200, tol=1e-12, options={"damping": 1.0})))
    x.grad = None
    z, stats = undamped(x)
    z.sum().backward()
    assert not torch.allclose(x.grad, torch.full_like(x, 0.4)) and stats.adjoint_rel_residual > 0.1
