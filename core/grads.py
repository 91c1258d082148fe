"""Backward modes of a DEQ, separate from the forward solver.

Each takes the map ``f`` (with grad to its parameters and injected input) and the solver's fixed point
``z_star`` (no graph), and returns ``z``: the value of f(z*) (or of the last unrolled step) with a
graph whose backward computes the chosen gradient. ``implicit_backward`` reports its adjoint solve (the
vector-Jacobian products it cost and how close it came: its ``SolverStats``) through ``on_backward(stats)`` when
the backward runs.

- ``ift``: implicit function theorem. The incoming gradient g is replaced by the solution y of the
  adjoint fixed point y = g + J^T y (J = df/dz at z*), found with any registered solver.
- ``phantom``: k damped unrolled steps z <- (1 - tau) z + tau f(z) from z*, backpropagated.
- ``onestep``: one step f(z*) with z* detached (Jacobian-free backprop).
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .solvers import SolverFn, check_solver_options, get_solver
from .stats import SolverStats

Map = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GradSpec:
    """How a DEQ is differentiated.

    Attributes:
        mode: "ift", "phantom" or "onestep".
        solver: the adjoint solver for ift (None: the forward solver).
        max_iter, tol: the adjoint solve's budget (ift).
        steps, tau: unrolled steps and damping (phantom).
        options: the adjoint solver's own options (with ``solver`` None: laid over the forward solver's options,
            which the adjoint then uses as the forward solve does, checked by ``BlockSpec``).

    The config's ``grad`` node has exactly these fields.
    """

    mode: str = "ift"
    solver: str | None = None
    max_iter: int = 30
    tol: float = 1e-4
    steps: int = 5
    tau: float = 0.6
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in GRAD_MODES:
            raise ValueError(f"grad mode {self.mode!r} is not valid; choose one of {tuple(GRAD_MODES)}")
        if self.solver is not None:
            get_solver(self.solver)
            check_solver_options(self.solver, self.options)
        if self.max_iter < 1:
            raise ValueError(f"grad max_iter={self.max_iter} must be >= 1")
        if not 0 <= self.tol < math.inf:
            raise ValueError(f"grad tol={self.tol!r} must be a finite number >= 0")
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
        # full precision whatever autocast the backward is called under: the adjoint solver's own products
        # (Anderson's Gram matrix and mixing) in bf16 stall it near 1e-3, as the forward solve would
        with torch.enable_grad(), torch.autocast(grad.device.type, enabled=False):
            return ctx.solve(grad), None


def implicit_backward(
    f: Map, z_star: torch.Tensor, spec: GradSpec, adjoint: SolverFn, on_backward: Callable[[SolverStats], None],
    f0: torch.Tensor | None = None, z0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, Optional[int]]:
    """f(z*) whose backward solves y = g + J^T y at z* with the ``adjoint`` solver function.

    One evaluation ``f0 = f(z0)`` with ``z0 = z*.detach().requires_grad_()`` serves both as the output
    (its graph carries the gradient to the parameters and the injected input) and for the adjoint's
    vector-Jacobian products. The caller passes ``f0, z0`` in when it built them already (the block does:
    they serve the Jacobian penalty too) and counts that evaluation; the adjoint solve's ``SolverStats`` (its
    VJPs, its residual) are reported through ``on_backward(stats)`` when the backward runs.

    Returns: (output, extra map evaluations in the forward pass, None: backward counted by ``on_backward``).

    Shapes: z_star: (B, ...) -> (B, ...)
    """
    extra = 0
    if z0 is None or f0 is None:
        z0 = z_star.detach().requires_grad_()
        f0 = f(z0)
        extra = 1

    def solve(grad: torch.Tensor) -> torch.Tensor:
        def adjoint_map(y: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(f0, z0, y, retain_graph=True)[0] + grad

        y, stats = adjoint(adjoint_map, grad, max_iter=spec.max_iter, tol=spec.tol, stop_mode="rel", **spec.options)
        on_backward(stats)
        return y

    return _AdjointIdentity.apply(f0, solve), extra, None


def phantom_backward(f: Map, z_star: torch.Tensor, spec: GradSpec, *_: object, **__: object
                     ) -> tuple[torch.Tensor, int, Optional[int]]:
    """``spec.steps`` damped steps from z*, kept in the graph (``steps`` evaluations forward and backward).

    Shapes: z_star: (B, ...) -> (B, ...)
    """
    z = z_star.detach()
    for _ in range(spec.steps):
        z = (1.0 - spec.tau) * z + spec.tau * f(z)
    return z, spec.steps, spec.steps


def onestep_backward(f: Map, z_star: torch.Tensor, spec: GradSpec, *_: object, **__: object
                     ) -> tuple[torch.Tensor, int, Optional[int]]:
    """f(z*) with z* detached: the gradient ignores the Jacobian of f in z (one evaluation each way).

    Shapes: z_star: (B, ...) -> (B, ...)
    """
    return f(z_star.detach()), 1, 1


# The backward modes, one contract: (f, z_star, spec, adjoint, on_backward, f0=None, z0=None) ->
# (output, extra forward evaluations, backward evaluations or None when counted by on_backward).
GRAD_MODES: dict[str, Callable[..., tuple[torch.Tensor, int, Optional[int]]]] = {
    "ift": implicit_backward,
    "phantom": phantom_backward,
    "onestep": onestep_backward,
}
