"""sample_dims and per-system holding: each system is mixed, judged and stopped on its own, so a solve
is exactly as causal as its map (the DEQ language model's requirement) and a sample's result does not
depend on the rest of its batch."""

import pytest
import torch

from support.cells import TanhCell
from tiedlab.core import SOLVERS, get_solver
from tiedlab.core.solvers import check_solver_options

B, T, D = 3, 12, 8


class CausalMixCell(torch.nn.Module):
    """z'_t = tanh(W z_t + C mean_{s <= t} z_s + x_t): position t reads positions <= t only.

    Shapes: z, x: (B, T, D) -> (B, T, D)
    """

    def __init__(self, dim: int = D, scale: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        w = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        c = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.W = scale * w / torch.linalg.matrix_norm(w, 2)
        self.C = scale * c / torch.linalg.matrix_norm(c, 2)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        prefix = z.cumsum(dim=1) / torch.arange(1, z.shape[1] + 1, dtype=z.dtype)[:, None]
        return torch.tanh(z @ self.W.T + prefix @ self.C.T + x)


def _inputs(cut: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two inputs that agree before position ``cut`` and differ from it on."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    x2 = x.clone()
    x2[:, cut:] = torch.randn(B, T - cut, D, generator=g, dtype=torch.float64)
    return x, x2


def _solve(name: str, x: torch.Tensor, **kw) -> torch.Tensor:
    cell = CausalMixCell()
    z, _ = get_solver(name)(lambda z: cell(z, x), torch.zeros_like(x), stop_mode="rel", **kw)
    return z


@pytest.mark.parametrize("tol,max_iter", [(1e-3, 40), (1e-8, 40), (0.0, 9)], ids=["loose", "tight", "fixed_steps"])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_per_position_solve_is_exactly_causal(name, tol, max_iter):
    cut = 5
    x, x2 = _inputs(cut)
    z = _solve(name, x, tol=tol, max_iter=max_iter, sample_dims=2)
    z2 = _solve(name, x2, tol=tol, max_iter=max_iter, sample_dims=2)
    assert torch.equal(z[:, :cut], z2[:, :cut]), f"{name}: leak {(z[:, :cut] - z2[:, :cut]).abs().max():.2e}"
    assert (z[:, cut:] - z2[:, cut:]).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["anderson", "broyden"])
def test_per_sample_mixing_leaks_the_future(name):
    """Why sample_dims=2 exists: with one system per sequence the mixing weights see every position."""
    cut = 5
    x, x2 = _inputs(cut)
    z = _solve(name, x, tol=0.0, max_iter=6)
    z2 = _solve(name, x2, tol=0.0, max_iter=6)
    assert (z[:, :cut] - z2[:, :cut]).abs().max() > 1e-8


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_per_position_solve_reaches_the_fixed_point(name):
    x, _ = _inputs(5)
    cell = CausalMixCell()
    z, stats = get_solver(name)(lambda z: cell(z, x), torch.zeros_like(x), max_iter=200, tol=1e-9,
                                stop_mode="abs", sample_dims=2)
    assert stats.converged == 1.0
    assert (cell(z, x) - z).norm(dim=-1).max() <= 1e-9


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_a_sample_does_not_depend_on_its_batch(name):
    """Each sample is held once converged, so solving it alone or inside a batch gives the same result."""
    cell = TanhCell(dim=6, scale=0.7)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x[1] *= 8  # a harder sample: the batch runs longer than sample 0 alone needs
    kw = dict(max_iter=60, tol=1e-4, stop_mode="rel")
    with torch.no_grad():
        batch, _ = get_solver(name)(lambda z: cell(z, x), torch.zeros_like(x), **kw)
        alone, _ = get_solver(name)(lambda z: cell(z, x[:1]), torch.zeros_like(x[:1]), **kw)
    torch.testing.assert_close(batch[:1], alone, atol=1e-12, rtol=0)  # to rounding (matmul kernels differ)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_sample_dims_name_the_value(bad):
    with pytest.raises(ValueError, match=f"sample_dims={bad!r} must be an integer >= 1"):
        check_solver_options("anderson", {"sample_dims": bad})
    with pytest.raises(ValueError, match="sample_dims"):
        get_solver("fixed_point")(lambda z: z, torch.zeros(2, 3), sample_dims=bad)
    with pytest.raises(ValueError, match=r"sample_dims=3 exceeds the 2 dimension\(s\) of the state \(2, 3\)"):
        get_solver("broyden")(lambda z: z, torch.zeros(2, 3), sample_dims=3)


@pytest.mark.parametrize("tol,max_iter", [(1e-2, 40), (1e-3, 6)], ids=["converging", "budget_limited"])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_coupled_solve_reports_the_residual_of_the_point_it_returns(name, tol, max_iter):
    """With sample_dims=2 a position's residual depends on the others: the returned point is one evaluated
    iterate, and the stats are that evaluation's (a per-position best would pair iterates of different steps)."""
    from tiedlab.core.stats import residuals

    x, _ = _inputs(5)
    cell = CausalMixCell(scale=0.9)
    f = lambda z: cell(z, x)  # noqa: E731
    z, stats = get_solver(name)(f, torch.zeros_like(x), tol=tol, max_iter=max_iter, stop_mode="rel", sample_dims=2)
    abs_r, rel_r = residuals(f(z).reshape(B * T, D), z.reshape(B * T, D))
    assert stats.rel_residual == pytest.approx(rel_r.mean().item(), rel=1e-9)
    assert stats.abs_residual == pytest.approx(abs_r.mean().item(), rel=1e-9)
    assert stats.converged == pytest.approx((rel_r <= tol).double().mean().item())


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_a_released_position_does_not_keep_a_stale_iterate(name):
    """f(a, b) = (a/2 + 1, b/2 + a): b's residual is 0 at the start (a = 0) and b is held; once a moves, b is
    released and must follow it to the fixed point (a, b) = (2, 4), not keep its stale b = 0."""
    def f(z):
        a, b = z[:, :1], z[:, 1:]
        return torch.cat([a / 2 + 1, b / 2 + a], dim=1)

    z0 = torch.zeros(1, 2, 1, dtype=torch.float64)
    z, stats = get_solver(name)(f, z0, tol=1e-10, max_iter=200, stop_mode="abs", sample_dims=2)
    assert z.flatten().tolist() == pytest.approx([2.0, 4.0], abs=1e-8)
    assert stats.converged == 1.0
