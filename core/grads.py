"""Backward modes of a DEQ, separate from the forward solver.

Each takes the map ``f`` (with grad to its parameters and injected input) and the solver's fixed point
``z_star`` (no graph), and returns ``z``: the value of f(z*) (or of the last unrolled step) with a
graph whose backward computes the chosen gradient. ``implicit_backward`` reports the number of
vector-Jacobian products its adjoint solve cost through ``on_backward(nfe)`` when the backward runs.

- ``ift``: implicit function theorem. The incoming gradient g is replaced by the solution y of the
  adjoint fixed point y = g + J^T y (J = df/dz at z*), found with any registered solver.
- ``phantom``: k damped unrolled steps z <- (1 - tau) z + tau f(z) from z*, backpropagated.
- ``onestep``: one step f(z*) with z* detached (Jacobian-free backprop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .solvers import get_solver

Map = Callable[[torch.Tensor], torch.Tensor]
GRAD_MODES = ("ift", "phantom", "onestep")


@dataclass(frozen=True)
class GradSpec:
    """How a DEQ is differentiated.

    Attributes:
        mode: "ift", "phantom" or "onestep".
        solver: the adjoint solver for ift (None: the forward solver).
        max_iter, tol: the adjoint solve's budget (ift).
        steps, tau: unrolled steps and damping (phantom).
        solver_options: extra options of the adjoint solver.
    """

    mode: str = "ift"
    solver: str | None = None
    max_iter: int = 30
    tol: float = 1e-4
    steps: int = 5
    tau: float = 0.6
    solver_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in GRAD_MODES:
            raise ValueError(f"grad mode {self.mode!r} is not valid; choose one of {GRAD_MODES}")
        if self.solver is not None:
            get_solver(self.solver)
        if self.max_iter < 1:
            raise ValueError(f"grad max_iter={self.max_iter} must be >= 1")
        if self.steps < 1:
            raise ValueError(f"grad steps={self.steps} must be >= 1")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"grad tau={self.tau} must be in (0, 1]")


class _AdjointIdentity(torch.autograd.Function):
    """Identity forward; backward maps the incoming gradient through a given adjoint solve."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, solve: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        ctx.solve = solve
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        with torch.enable_grad():
            return ctx.solve(grad), None


def implicit_backward(
    f: Map, z_star: torch.Tensor, spec: GradSpec, forward_solver: str,
    on_backward: Callable[[int], None], f0: torch.Tensor | None = None, z0: torch.Tensor | None = None,
) -> torch.Tensor:
    """f(z*) whose backward solves y = g + J^T y at z*.

    One evaluation ``f0 = f(z0)`` with ``z0 = z*.detach().requires_grad_()`` serves both as the output
    (its graph carries the gradient to the parameters and the injected input) and for the adjoint's
    vector-Jacobian products. The caller may pass ``f0, z0`` in when it built them already (for the
    Jacobian penalty).

    Shapes: z_star: (B, ...) -> (B, ...)
    """
    if z0 is None or f0 is None:
        z0 = z_star.detach().requires_grad_()
        f0 = f(z0)
    solver = get_solver(spec.solver or forward_solver)

    def solve(grad: torch.Tensor) -> torch.Tensor:
        def adjoint_map(y: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(f0, z0, y, retain_graph=True)[0] + grad

        y, stats = solver(adjoint_map, grad, max_iter=spec.max_iter, tol=spec.tol, stop_mode="rel",
                          **spec.solver_options)
        on_backward(stats.nfe)
        return y

    return _AdjointIdentity.apply(f0, solve)


def phantom_backward(f: Map, z_star: torch.Tensor, spec: GradSpec) -> torch.Tensor:
    """``spec.steps`` damped steps from z*, kept in the graph.

    Shapes: z_star: (B, ...) -> (B, ...)
    """
    z = z_star.detach()
    for _ in range(spec.steps):
        z = (1.0 - spec.tau) * z + spec.tau * f(z)
    return z


def onestep_backward(f: Map, z_star: torch.Tensor) -> torch.Tensor:
    """f(z*) with z* detached: the gradient ignores the Jacobian of f in z.

    Shapes: z_star: (B, ...) -> (B, ...)
    """
    return f(z_star.detach())
