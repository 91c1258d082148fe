"""Fixed-point solvers for z* = f(z*): plain functions with one contract and a registry.

Contract: ``solver(f, z0, *, max_iter, tol, stop_mode, **options) -> (z, SolverStats)``.

- ``f`` maps a tensor of the shape of ``z0`` to one of the same shape; it is called without grad.
- The first dimension is the batch: residuals are per sample, the solver stops when every sample's
  residual (``stop_mode`` "abs" or "rel") is <= ``tol`` or after ``max_iter`` evaluations of ``f``.
- The returned ``z`` holds, per sample, the iterate with the lowest residual seen.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from .stats import SolverStats, residuals

Map = Callable[[torch.Tensor], torch.Tensor]
STOP_MODES = ("abs", "rel")


class _Tracker:
    """Keeps the best iterate per sample and the residual traces."""

    def __init__(self, z0: torch.Tensor, tol: float, stop_mode: str):
        if stop_mode not in STOP_MODES:
            raise ValueError(f"stop_mode={stop_mode!r} is not valid; choose one of {STOP_MODES}")
        self.tol, self.stop_mode = tol, stop_mode
        self.best = z0.clone()
        self.best_abs = torch.full((z0.shape[0],), float("inf"), device=z0.device, dtype=z0.dtype)
        self.best_rel = self.best_abs.clone()
        self.stats = SolverStats()

    def update(self, z: torch.Tensor, fz: torch.Tensor) -> bool:
        """Record the residual of ``z`` (with ``fz = f(z)``); True when every sample has converged."""
        abs_r, rel_r = residuals(fz, z)
        key, best_key = (abs_r, self.best_abs) if self.stop_mode == "abs" else (rel_r, self.best_rel)
        better = key < best_key
        self.best[better] = z[better].to(self.best.dtype)
        self.best_abs = torch.where(better, abs_r, self.best_abs)
        self.best_rel = torch.where(better, rel_r, self.best_rel)
        self.stats.abs_trace.append(abs_r.mean().item())
        self.stats.rel_trace.append(rel_r.mean().item())
        return bool(((self.best_abs if self.stop_mode == "abs" else self.best_rel) <= self.tol).all())

    def finish(self, nfe: int) -> tuple[torch.Tensor, SolverStats]:
        s = self.stats
        s.nfe = nfe
        s.abs_residual = self.best_abs.mean().item()
        s.rel_residual = self.best_rel.mean().item()
        final = self.best_abs if self.stop_mode == "abs" else self.best_rel
        s.converged = (final <= self.tol).float().mean().item()
        return self.best, s


def _check_budget(max_iter: int, tol: float) -> None:
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} must be >= 1")
    if not tol >= 0:
        raise ValueError(f"tol={tol} must be >= 0")


def fixed_point(
    f: Map, z0: torch.Tensor, *, max_iter: int = 30, tol: float = 1e-4, stop_mode: str = "rel",
    damping: float = 1.0,
) -> tuple[torch.Tensor, SolverStats]:
    """Damped Picard iteration z <- (1 - damping) z + damping f(z).

    Shapes: z0: (B, ...) -> z: (B, ...)
    """
    _check_budget(max_iter, tol)
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping={damping} must be in (0, 1]")
    track = _Tracker(z0, tol, stop_mode)
    z = z0
    for k in range(1, max_iter + 1):
        fz = f(z)
        if track.update(z, fz):
            return track.finish(k)
        z = fz if damping == 1.0 else (1.0 - damping) * z + damping * fz
    return track.finish(max_iter)


def anderson(
    f: Map, z0: torch.Tensor, *, max_iter: int = 30, tol: float = 1e-4, stop_mode: str = "rel",
    memory: int = 5, lam: float = 1e-4, beta: float = 1.0,
) -> tuple[torch.Tensor, SolverStats]:
    """Anderson acceleration (type II) with ``memory`` past iterates, batched.

    Each step mixes the last m iterates with weights alpha that minimise ||sum alpha_i g_i||^2 subject
    to sum alpha_i = 1 (g_i = f(x_i) - x_i), with Tikhonov regularisation ``lam`` relative to the
    mean squared residual (so it works at any residual scale); ``beta`` damps the mix.

    Shapes: z0: (B, ...) -> z: (B, ...)
    """
    _check_budget(max_iter, tol)
    if memory < 1:
        raise ValueError(f"memory={memory} must be >= 1")
    shape, bsz = z0.shape, z0.shape[0]
    g = lambda v: f(v.view(shape)).reshape(bsz, -1)  # noqa: E731
    track = _Tracker(z0, tol, stop_mode)
    X = z0.new_zeros(bsz, memory, z0[0].numel())
    F = torch.zeros_like(X)
    X[:, 0] = z0.reshape(bsz, -1)
    F[:, 0] = g(X[:, 0])
    if track.update(X[:, 0].view(shape), F[:, 0].view(shape)) or max_iter == 1:
        return track.finish(1)
    eye = torch.eye(memory, dtype=z0.dtype, device=z0.device)
    for k in range(1, max_iter):
        n = min(k, memory)
        G = F[:, :n] - X[:, :n]  # (B, n, D)
        # Solve [0 1^T; 1 GG^T + lam I] [c; alpha] = [1; 0] for the mixing weights.
        H = z0.new_zeros(bsz, n + 1, n + 1)
        H[:, 0, 1:] = 1.0
        H[:, 1:, 0] = 1.0
        GG = G @ G.transpose(1, 2)
        scale = GG.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)[:, None, None]
        H[:, 1:, 1:] = GG + lam * scale * eye[:n, :n]
        rhs = z0.new_zeros(bsz, n + 1, 1)
        rhs[:, 0] = 1.0
        alpha = torch.linalg.solve(H, rhs)[:, 1:]  # (B, n, 1)
        mixed_f = (alpha.transpose(1, 2) @ F[:, :n])[:, 0]
        x_new = mixed_f if beta == 1.0 else beta * mixed_f + (1 - beta) * (alpha.transpose(1, 2) @ X[:, :n])[:, 0]
        slot = k % memory
        X[:, slot] = x_new
        F[:, slot] = g(x_new)
        if track.update(X[:, slot].view(shape), F[:, slot].view(shape)):
            return track.finish(k + 1)
    return track.finish(max_iter)


def broyden(
    f: Map, z0: torch.Tensor, *, max_iter: int = 30, tol: float = 1e-4, stop_mode: str = "rel",
    memory: int = 30, eps: float = 1e-12,
) -> tuple[torch.Tensor, SolverStats]:
    """Limited-memory "good" Broyden's method on g(z) = f(z) - z, batched.

    The inverse Jacobian of g is kept as -I + U^T V with one rank-one term per step (Sherman-Morrison);
    after ``memory`` updates the oldest term is overwritten.

    Shapes: z0: (B, ...) -> z: (B, ...)
    """
    _check_budget(max_iter, tol)
    if memory < 1:
        raise ValueError(f"memory={memory} must be >= 1")
    shape, bsz = z0.shape, z0.shape[0]
    dim = z0[0].numel()
    track = _Tracker(z0, tol, stop_mode)
    x = z0.reshape(bsz, dim)
    fx = f(x.view(shape)).reshape(bsz, dim)
    gx = fx - x
    if track.update(x.view(shape), fx.view(shape)) or max_iter == 1:
        return track.finish(1)
    memory = min(memory, max_iter)  # never more rank-one terms than steps: allocate no more
    U = x.new_empty(bsz, memory, dim)
    V = x.new_empty(bsz, memory, dim)
    used = 0

    def inv_jac(v: torch.Tensor) -> torch.Tensor:  # B_k v = -v + U^T (V v)
        if used == 0:
            return -v
        n = min(used, memory)
        coef = torch.bmm(V[:, :n], v.unsqueeze(2))  # (B, n, 1)
        return torch.baddbmm(-v.unsqueeze(1), coef.transpose(1, 2), U[:, :n]).squeeze(1)

    def inv_jac_t(v: torch.Tensor) -> torch.Tensor:  # v^T B_k = -v + V^T (U v)
        if used == 0:
            return -v
        n = min(used, memory)
        coef = torch.bmm(U[:, :n], v.unsqueeze(2))
        return torch.baddbmm(-v.unsqueeze(1), coef.transpose(1, 2), V[:, :n]).squeeze(1)

    for k in range(1, max_iter):
        dx = -inv_jac(gx)
        x = x + dx
        fx = f(x.view(shape)).reshape(bsz, dim)
        gx_new = fx - x
        if track.update(x.view(shape), fx.view(shape)):
            return track.finish(k + 1)
        dg = gx_new - gx
        gx = gx_new
        v = inv_jac_t(dx)
        denom = (v * dg).sum(dim=1, keepdim=True)
        ok = denom.abs() > eps
        u = (dx - inv_jac(dg)) * torch.where(ok, 1.0 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        slot = used % memory
        U[:, slot] = u
        V[:, slot] = v
        used += 1
    return track.finish(max_iter)


SOLVERS: dict[str, Callable[..., tuple[torch.Tensor, SolverStats]]] = {
    "fixed_point": fixed_point,
    "anderson": anderson,
    "broyden": broyden,
}


def get_solver(name: str) -> Callable[..., tuple[torch.Tensor, SolverStats]]:
    """The solver registered under ``name``; a ValueError lists the valid names."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; valid solvers: {sorted(SOLVERS)}") from None


def solver_options(name: str) -> set[str]:
    """The solver-specific keyword options ``name`` accepts (beyond max_iter, tol, stop_mode)."""
    params = inspect.signature(get_solver(name)).parameters
    return {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY} - {
        "max_iter", "tol", "stop_mode"}


def check_solver_options(name: str, options: dict) -> None:
    """Raise a ValueError naming any option ``name`` does not take, with the ones it does."""
    valid = solver_options(name)
    bad = sorted(set(options) - valid)
    if bad:
        raise ValueError(f"solver {name!r} has no option(s) {bad}; valid options: {sorted(valid)}")
