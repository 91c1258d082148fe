"""Solvers reach their tolerance and agree with exact solutions."""

import pytest
import torch

from support.cells import LinearCell, TanhCell
from tiedlab.core import SOLVERS, get_solver, solver_options
from tiedlab.core.solvers import check_solver_options


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_reaches_tol_on_random_contraction(name):
    cell = TanhCell(dim=16, scale=0.8)
    x = torch.randn(8, 16, dtype=torch.float64)
    with torch.no_grad():
        z, stats = get_solver(name)(lambda z: cell(z, x), torch.zeros_like(x), max_iter=200, tol=1e-8, stop_mode="rel")
        rel = ((cell(z, x) - z).norm(dim=1) / cell(z, x).norm(dim=1)).max()
    assert stats.converged == 1.0
    assert rel <= 1e-8
    assert stats.nfe == len(stats.rel_trace) and stats.nfe < 200
    assert stats.rel_trace[-1] <= 1e-8 < stats.rel_trace[0]


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_matches_exact_linear_fixed_point(name):
    cell = LinearCell(dim=7, scale=0.7)
    x = torch.randn(5, 7, dtype=torch.float64)
    with torch.no_grad():
        exact = torch.linalg.solve(torch.eye(7, dtype=torch.float64) - cell.A, (x @ cell.B.T).T).T
        z, stats = get_solver(name)(lambda z: cell(z, x), torch.zeros_like(x), max_iter=500, tol=1e-11, stop_mode="abs")
    torch.testing.assert_close(z, exact, atol=1e-9, rtol=1e-9)
    assert stats.abs_residual <= 1e-11


def test_accelerated_solvers_need_fewer_steps_than_picard():
    # Eigenvalues spread over [-0.95, 0.95]: Picard needs ~360 steps for 1e-8.
    cell = LinearCell(dim=20)
    q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    with torch.no_grad():
        cell.A.copy_(q @ torch.diag(torch.linspace(-0.95, 0.95, 20, dtype=torch.float64)) @ q.T)
    x = torch.randn(4, 20, dtype=torch.float64)
    nfe = {}
    with torch.no_grad():
        for name in SOLVERS:
            _, stats = get_solver(name)(lambda z: cell(z, x), torch.zeros_like(x), max_iter=1000, tol=1e-8, stop_mode="rel")
            nfe[name] = stats.nfe
    assert nfe["anderson"] < nfe["fixed_point"] / 3
    assert nfe["broyden"] < nfe["fixed_point"] / 3


def test_damping_converges_where_plain_picard_oscillates():
    # f(z) = -1.5 z + x has fixed point x / 2.5 and |f'| > 1: Picard diverges, damped Picard converges.
    x = torch.randn(3, 4, dtype=torch.float64)
    f = lambda z: -1.5 * z + x  # noqa: E731
    _, plain = get_solver("fixed_point")(f, torch.zeros_like(x), max_iter=30, tol=1e-8, stop_mode="abs")
    z, damped = get_solver("fixed_point")(f, torch.zeros_like(x), max_iter=200, tol=1e-8, stop_mode="abs", damping=0.4)
    assert plain.converged == 0.0
    assert damped.converged == 1.0
    torch.testing.assert_close(z, x / 2.5)


def test_batch_is_solved_per_sample():
    # One sample converges at once (x = 0 is the fixed point of tanh(W z)), others need iterations;
    # each is judged by its own residual.
    cell = TanhCell(dim=6, scale=0.5)
    with torch.no_grad():
        cell.U.copy_(torch.eye(6, dtype=torch.float64))
    x = torch.randn(3, 6, dtype=torch.float64)
    x[0] = 0
    z, stats = get_solver("anderson")(lambda z: cell(z, x), torch.zeros_like(x), max_iter=100, tol=1e-9, stop_mode="abs")
    assert stats.converged == 1.0
    assert torch.all(z[0] == 0)


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown solver 'newton'.*anderson.*broyden.*fixed_point"):
        get_solver("newton")
    with pytest.raises(ValueError, match=r"no option\(s\) \['memory'\].*damping"):
        check_solver_options("fixed_point", {"memory": 3})
    assert solver_options("anderson") == {"sample_dims", "memory", "lam", "beta"}
    assert all("sample_dims" in solver_options(name) for name in SOLVERS)
    with pytest.raises(ValueError, match="stop_mode"):
        get_solver("anderson")(lambda z: z, torch.zeros(2, 2), stop_mode="max")
    with pytest.raises(ValueError, match="max_iter=0"):
        get_solver("broyden")(lambda z: z, torch.zeros(2, 2), max_iter=0)
    # a held system repeats its last column: without the regulariser the bordered matrix is exactly singular
    with pytest.raises(ValueError, match=r"solver option lam=0.0 must be a finite number > 0"):
        check_solver_options("anderson", {"lam": 0.0})


def _spread_linear_maps(rho: float, dim: int = 64, batch: int = 4, seeds: int = 8):
    """Seeded contractive maps f(z) = z A^T + x, A symmetric with eigenvalues spread over [-rho, rho]."""
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))
        A = q @ torch.diag(torch.linspace(-rho, rho, dim, dtype=torch.float64)) @ q.T
        x = torch.randn(batch, dim, dtype=torch.float64, generator=g)
        yield (lambda z, A=A, x=x: z @ A.T + x), x


@pytest.mark.parametrize("memory, rho", [(10, 0.95), (30, 0.99)])
def test_broyden_with_memory_below_a_third_of_max_iter_converges(memory, rho):
    # The old circular overwrite of the oldest rank-one term made these iterates grow by 1e16 to 1e100
    # (the best iterate it kept had relative residual 1e-3 to 1e-6); with restarts all converge.
    max_iter = 100
    assert max_iter > 3 * memory
    for f, x in _spread_linear_maps(rho):
        z, stats = get_solver("broyden")(f, torch.zeros_like(x), max_iter=max_iter, tol=1e-8, stop_mode="rel",
                                         memory=memory)
        rel = ((f(z) - z).norm(dim=1) / f(z).norm(dim=1)).max()
        assert stats.nfe > memory + 1  # at least one restart happened
        assert stats.converged == 1.0
        assert rel <= 1e-8
        assert max(stats.abs_trace) <= 1e3 * stats.abs_trace[0]


def test_broyden_memory_beyond_the_steps_taken_changes_nothing():
    # Restarts only occur once ``memory`` terms are stored: any memory >= max_iter - 1 is the full method.
    f, x = next(_spread_linear_maps(0.95))
    runs = {m: get_solver("broyden")(f, torch.zeros_like(x), max_iter=40, tol=1e-12, stop_mode="rel", memory=m)
            for m in (10, 39, 40, 1000)}
    for m in (40, 1000):
        assert torch.equal(runs[m][0], runs[39][0])
        assert runs[m][1].abs_trace == runs[39][1].abs_trace
    assert runs[10][1].abs_trace[:11] == runs[39][1].abs_trace[:11]  # the same until the first restart
    assert runs[10][1].abs_trace != runs[39][1].abs_trace
