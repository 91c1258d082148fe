"""Fixed-point solvers for z* = f(z*): plain functions with one contract and a registry.

Contract: ``solver(f, z0, *, max_iter, tol, stop_mode, sample_dims=1, **options) -> (z, SolverStats)``.

- ``f`` maps a tensor of the shape of ``z0`` to one of the same shape; it is called without grad.
- The first ``sample_dims`` dimensions index independent systems (default 1: one per sample; 2 for a
  sequence state (B, T, D): one per position). Each system has its own residual (``stop_mode`` "abs"
  or "rel"), its own quasi-Newton history (Anderson weights, Broyden's inverse Jacobian) and its own
  stopping: a system whose current residual is <= ``tol`` is held (not updated) while it stays so.
  The solver stops when every system is held, or after ``max_iter`` evaluations of ``f``.
- The returned ``z`` holds, per system, the iterate with the lowest residual seen when the systems are
  independent (``sample_dims=1``: one per sample). With ``sample_dims >= 2`` the systems are coupled through
  ``f`` (a sequence's positions, a graph's nodes): a system's residual is measured against the others' values
  at that iteration, so per-system best iterates from different iterations form a point that was never
  evaluated, and its recorded residuals would not be its own. There the solver returns the last evaluated
  iterate, and the residuals and converged fraction it reports are those of that one evaluation of ``f``.

Why per-system holding: a system's trajectory then depends on the others only through ``f``, never
through a shared stopping step or shared mixing weights. For a causal map (position t of ``f(z)``
depends on positions <= t of ``z``) and ``sample_dims=2``, the solution at position t is therefore an
exact function of the inputs at positions <= t: the solve is as causal as the map.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .stats import SolverStats, residuals

Map = Callable[[torch.Tensor], torch.Tensor]
SolverFn = Callable[..., "tuple[torch.Tensor, SolverStats]"]
STOP_MODES = ("abs", "rel")


class _Tracker:
    """Keeps the iterate to return per system (the best one seen, or with ``coupled`` the last one evaluated:
    see the module docstring), which systems are still active, and the residual traces.

    Shapes: z0: (N, D), one row per system
    """

    def __init__(self, z0: torch.Tensor, tol: float, stop_mode: str, coupled: bool = False):
        if stop_mode not in STOP_MODES:
            raise ValueError(f"stop_mode={stop_mode!r} is not valid; choose one of {STOP_MODES}")
        self.tol, self.stop_mode, self.coupled = tol, stop_mode, coupled
        self.best = z0.clone()
        self.best_abs = torch.full((z0.shape[0],), float("inf"), device=z0.device, dtype=z0.dtype)
        self.best_rel = self.best_abs.clone()
        self.active = torch.ones(z0.shape[0], dtype=torch.bool, device=z0.device)
        self.stats = SolverStats()

    def update(self, z: torch.Tensor, fz: torch.Tensor) -> bool:
        """Record the residual of ``z`` (with ``fz = f(z)``); True when no system is active any more.

        A system stays active while its current residual is above ``tol`` (or NaN).
        """
        abs_r, rel_r = residuals(fz, z)
        key, best_key = (abs_r, self.best_abs) if self.stop_mode == "abs" else (rel_r, self.best_rel)
        better = torch.ones_like(key, dtype=torch.bool) if self.coupled else key < best_key
        self.best = torch.where(better[:, None], z.to(self.best.dtype), self.best)
        self.best_abs = torch.where(better, abs_r, self.best_abs)
        self.best_rel = torch.where(better, rel_r, self.best_rel)
        self.active = ~(key <= self.tol)
        self.stats.abs_trace.append(abs_r.mean().item())
        self.stats.rel_trace.append(rel_r.mean().item())
        return not bool(self.active.any())

    def hold(self, proposed: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """The next iterate: ``proposed`` for active systems, ``current`` for held ones.

        Shapes: proposed, current: (N, D) -> (N, D)
        """
        return torch.where(self.active[:, None], proposed, current)

    def finish(self, nfe: int, shape: torch.Size) -> tuple[torch.Tensor, SolverStats]:
        s = self.stats
        s.nfe = nfe
        s.abs_residual = self.best_abs.mean().item()
        s.rel_residual = self.best_rel.mean().item()
        final = self.best_abs if self.stop_mode == "abs" else self.best_rel
        s.converged = (final <= self.tol).float().mean().item()
        return self.best.view(shape), s


def _systems(z0: torch.Tensor, sample_dims: int) -> tuple[int, int]:
    """(number of systems, size of each) when the first ``sample_dims`` dims of ``z0`` index systems."""
    _check_sample_dims(sample_dims)
    if sample_dims > z0.dim():
        raise ValueError(f"sample_dims={sample_dims} exceeds the {z0.dim()} dimension(s) of the state "
                         f"{tuple(z0.shape)}; choose 1 to {z0.dim()}")
    return math.prod(z0.shape[:sample_dims]), math.prod(z0.shape[sample_dims:])


def _check_sample_dims(sample_dims: object) -> None:
    if isinstance(sample_dims, bool) or not isinstance(sample_dims, int) or sample_dims < 1:
        raise ValueError(f"sample_dims={sample_dims!r} must be an integer >= 1 (1: one system per sample, "
                         "2: one per (sample, position))")


def _check_budget(max_iter: int, tol: float) -> None:
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} must be >= 1")
    if not 0 <= tol < math.inf:
        raise ValueError(f"tol={tol} must be a finite number >= 0 (an infinite tol holds every system after one "
                         "evaluation of f)")


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The solvers' own options and the values each may take (checked on a spec's creation and on every call).
OPTION_RANGES: dict[str, tuple[Callable[[object], bool], str]] = {
    "memory": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    # > 0: a held system repeats its last column, and lam = 0 leaves the bordered matrix exactly singular
    "lam": (lambda v: _finite(v) and v > 0, "a finite number > 0 (the regulariser of the least-squares solve)"),
    "beta": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1] (0 never leaves z0)"),
    "damping": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1] (0 never leaves z0)"),
    "eps": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
}


def _check_option_values(**options: object) -> None:
    """Raise a ValueError naming the first option whose value is out of its range (``OPTION_RANGES``)."""
    for key, value in options.items():
        ok, expected = OPTION_RANGES[key]
        if not ok(value):
            raise ValueError(f"solver option {key}={value!r} must be {expected}")


def fixed_point(
    f: Map, z0: torch.Tensor, *, max_iter: int = 30, tol: float = 1e-4, stop_mode: str = "rel",
    sample_dims: int = 1, damping: float = 1.0,
) -> tuple[torch.Tensor, SolverStats]:
    """Damped Picard iteration z <- (1 - damping) z + damping f(z), per system (see the module contract).

    Shapes: z0: (B, ...) -> z: (B, ...)
    """
    _check_budget(max_iter, tol)
    _check_option_values(damping=damping)
    shape = z0.shape
    n, dim = _systems(z0, sample_dims)
    g = lambda v: f(v.view(shape)).reshape(n, dim)  # noqa: E731
    z = z0.reshape(n, dim)
    track = _Tracker(z, tol, stop_mode, coupled=sample_dims > 1)
    for k in range(1, max_iter + 1):
        fz = g(z)
        if track.update(z, fz):
            return track.finish(k, shape)
        z = track.hold(fz if damping == 1.0 else (1.0 - damping) * z + damping * fz, z)
    return track.finish(max_iter, shape)


def anderson(
    f: Map, z0: torch.Tensor, *, max_iter: int = 30, tol: float = 1e-4, stop_mode: str = "rel",
    sample_dims: int = 1, memory: int = 5, lam: float = 1e-4, beta: float = 1.0,
) -> tuple[torch.Tensor, SolverStats]:
    """Anderson acceleration (type II) with ``memory`` past iterates, batched over systems.

    Each step mixes the last m iterates of each system with weights alpha that minimise
    ||sum alpha_i g_i||^2 subject to sum alpha_i = 1 (g_i = f(x_i) - x_i, the system's own rows), with
    Tikhonov regularisation ``lam`` relative to the system's mean squared residual (so it works at any
    residual scale); ``beta`` damps the mix. All systems are solved at once (one batched solve).

    Shapes: z0: (B, ...) -> z: (B, ...)
    """
    _check_budget(max_iter, tol)
    _check_option_values(memory=memory, lam=lam, beta=beta)
    shape = z0.shape
    bsz, dim = _systems(z0, sample_dims)
    g = lambda v: f(v.view(shape)).reshape(bsz, dim)  # noqa: E731
    X = z0.new_zeros(bsz, memory, dim)
    F = torch.zeros_like(X)
    X[:, 0] = z0.reshape(bsz, dim)
    F[:, 0] = g(X[:, 0])
    track = _Tracker(X[:, 0], tol, stop_mode, coupled=sample_dims > 1)
    if track.update(X[:, 0], F[:, 0]) or max_iter == 1:
        return track.finish(1, shape)
    eye = torch.eye(memory, dtype=z0.dtype, device=z0.device)
    for k in range(1, max_iter):
        n = min(k, memory)
        G = F[:, :n] - X[:, :n]  # (N, n, D)
        # Solve [0 1^T; 1 GG^T + lam I] [c; alpha] = [1; 0] for the mixing weights.
        H = z0.new_zeros(bsz, n + 1, n + 1)
        H[:, 0, 1:] = 1.0
        H[:, 1:, 0] = 1.0
        GG = G @ G.transpose(1, 2)
        scale = GG.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)[:, None, None]
        H[:, 1:, 1:] = GG + lam * scale * eye[:n, :n]
        rhs = z0.new_zeros(bsz, n + 1, 1)
        rhs[:, 0] = 1.0
        alpha = torch.linalg.solve(H, rhs)[:, 1:]  # (N, n, 1)
        mixed_f = (alpha.transpose(1, 2) @ F[:, :n])[:, 0]
        x_new = mixed_f if beta == 1.0 else beta * mixed_f + (1 - beta) * (alpha.transpose(1, 2) @ X[:, :n])[:, 0]
        slot = k % memory
        X[:, slot] = track.hold(x_new, X[:, (k - 1) % memory])
        F[:, slot] = g(X[:, slot])
        if track.update(X[:, slot], F[:, slot]):
            return track.finish(k + 1, shape)
    return track.finish(max_iter, shape)


def broyden(
    f: Map, z0: torch.Tensor, *, max_iter: int = 30, tol: float = 1e-4, stop_mode: str = "rel",
    sample_dims: int = 1, memory: int = 30, eps: float = 1e-12,
) -> tuple[torch.Tensor, SolverStats]:
    """Limited-memory "good" Broyden's method on g(z) = f(z) - z, batched over systems.

    Each system keeps its own inverse Jacobian estimate -I + U^T V with one rank-one term per step
    (Sherman-Morrison). A held system takes no step and so adds a zero term. With ``sample_dims=2`` the
    estimate covers each position's own block of the Jacobian only (the coupling between positions is
    left to the iteration).

    Limited memory is a restart: when ``memory`` terms are stored, all of them are dropped and the
    estimate is rebuilt from -I, starting with the latest secant pair. Dropping only the oldest term
    is not valid: every later term was computed from the estimate that still contained it (u_k and
    v_k both pass through B_{k-1}), so what remains estimates no Jacobian; on contractive linear maps
    that circular overwrite made the iterates grow by 1e16 and more. The restart happens at the same
    steps for every system, so a system's trajectory still depends on the others only through ``f``.
    With ``memory >= max_iter - 1`` (the defaults) no restart occurs.

    Shapes: z0: (B, ...) -> z: (B, ...)
    """
    _check_budget(max_iter, tol)
    _check_option_values(memory=memory, eps=eps)
    shape = z0.shape
    bsz, dim = _systems(z0, sample_dims)
    x = z0.reshape(bsz, dim)
    track = _Tracker(x, tol, stop_mode, coupled=sample_dims > 1)
    fx = f(x.view(shape)).reshape(bsz, dim)
    gx = fx - x
    if track.update(x, fx) or max_iter == 1:
        return track.finish(1, shape)
    memory = min(memory, max_iter - 1)  # at most max_iter - 1 secant terms are ever made: allocate no more
    U = x.new_empty(bsz, memory, dim)
    V = x.new_empty(bsz, memory, dim)
    used = 0  # terms of the current estimate, 0..memory

    def inv_jac(v: torch.Tensor) -> torch.Tensor:  # B v = -v + U^T (V v)
        if used == 0:
            return -v
        coef = torch.bmm(V[:, :used], v.unsqueeze(2))  # (N, used, 1)
        return torch.baddbmm(-v.unsqueeze(1), coef.transpose(1, 2), U[:, :used]).squeeze(1)

    def inv_jac_t(v: torch.Tensor) -> torch.Tensor:  # v^T B = -v + V^T (U v)
        if used == 0:
            return -v
        coef = torch.bmm(U[:, :used], v.unsqueeze(2))
        return torch.baddbmm(-v.unsqueeze(1), coef.transpose(1, 2), V[:, :used]).squeeze(1)

    for k in range(1, max_iter):
        dx = track.hold(-inv_jac(gx), torch.zeros_like(gx))
        x = x + dx
        fx = f(x.view(shape)).reshape(bsz, dim)
        gx_new = fx - x
        if track.update(x, fx):
            return track.finish(k + 1, shape)
        dg = gx_new - gx
        gx = gx_new
        if used == memory:
            used = 0  # restart from -I at the current iterate (see the docstring)
        v = inv_jac_t(dx)  # zero for a held system (dx = 0): its denominator is 0 and its term is zero
        denom = (v * dg).sum(dim=1, keepdim=True)
        ok = denom.abs() > eps
        u = (dx - inv_jac(dg)) * torch.where(ok, 1.0 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        U[:, used] = u
        V[:, used] = v
        used += 1
    return track.finish(max_iter, shape)


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


@dataclass(frozen=True)
class SolverSpec:
    """The forward solve of a DEQ: which solver, its budget in training and in eval mode, its options.

    The config's ``solver`` node has exactly these fields (``paradigms/config.py`` generates it from them).

    Attributes:
        name: a key of ``SOLVERS`` (looked up once, on creation).
        max_iter, tol, stop_mode: the budget in training ("abs" or "rel" residual against ``tol``).
        eval_max_iter, eval_tol: the budget in eval mode (test-time compute); None = as in training.
        options: the solver's own keyword options (see ``solver_options(name)``), e.g. Anderson's memory,
            and ``sample_dims`` (every solver).
    """

    name: str = "anderson"
    max_iter: int = 30
    tol: float = 1e-3
    stop_mode: str = "rel"
    eval_max_iter: int | None = None
    eval_tol: float | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_function", get_solver(self.name))
        check_solver_options(self.name, self.options)
        if self.stop_mode not in STOP_MODES:
            raise ValueError(f"solver stop_mode={self.stop_mode!r} is not valid; choose one of {STOP_MODES}")
        for key in ("max_iter", "eval_max_iter"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"solver {key}={value!r} must be an integer >= 1")
        for key in ("tol", "eval_tol"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < math.inf:
                raise ValueError(f"solver {key}={value!r} must be a finite number >= 0")

    @property
    def function(self) -> Callable[..., tuple[torch.Tensor, SolverStats]]:
        """The registered solver function."""
        return self._function  # type: ignore[attr-defined]

    def solve(self, f: Map, z0: torch.Tensor, training: bool = True) -> tuple[torch.Tensor, SolverStats]:
        """z* = f(z*) from ``z0`` with the training or the eval-mode budget.

        Shapes: z0: (B, ...) -> z: (B, ...)
        """
        max_iter = self.max_iter if training or self.eval_max_iter is None else self.eval_max_iter
        tol = self.tol if training or self.eval_tol is None else self.eval_tol
        return self.function(f, z0, max_iter=max_iter, tol=tol, stop_mode=self.stop_mode, **self.options)


def solver_options(name: str) -> set[str]:
    """The keyword options ``name`` accepts beyond max_iter, tol, stop_mode: ``sample_dims`` (every
    solver) and its own (anderson: memory, lam, beta; broyden: memory, eps; fixed_point: damping)."""
    params = inspect.signature(get_solver(name)).parameters
    return {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY} - {
        "max_iter", "tol", "stop_mode"}


def check_solver_options(name: str, options: dict) -> None:
    """Raise a ValueError naming any option ``name`` does not take (with the ones it does), or a bad value
    (``sample_dims``, or one out of its ``OPTION_RANGES`` range)."""
    valid = solver_options(name)
    bad = sorted(set(options) - valid)
    if bad:
        raise ValueError(f"solver {name!r} has no option(s) {bad}; valid options: {sorted(valid)}")
    if "sample_dims" in options:
        _check_sample_dims(options["sample_dims"])
    _check_option_values(**{k: v for k, v in options.items() if k in OPTION_RANGES})
