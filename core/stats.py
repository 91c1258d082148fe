"""Diagnostics a block returns with its output: solver effort, residuals, sparsity, parameter counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class SolverStats:
    """What one solver call did.

    Attributes:
        nfe: evaluations of the map it was given.
        abs_trace: per step, the batch mean of ||f(z) - z||.
        rel_trace: per step, the batch mean of ||f(z) - z|| / ||f(z)||.
        abs_residual: batch mean absolute residual of the returned point.
        rel_residual: batch mean relative residual of the returned point.
        converged: fraction of systems (samples, or rows with sample_dims > 1) whose residual (in the stop mode) is <= tol.
    """

    nfe: int = 0
    abs_trace: list[float] = field(default_factory=list)
    rel_trace: list[float] = field(default_factory=list)
    abs_residual: float = float("nan")
    rel_residual: float = float("nan")
    converged: float = 0.0


@dataclass
class BlockStats:
    """What one block forward (and later its backward) cost and how well it converged.

    NFE counts cell applications, so an L-layer tied block has ``nfe_forward == L`` and a DEQ whose
    map is a cycle of K masked cells counts K per solver step. ``nfe_backward`` is filled in when the
    backward pass runs (vector-Jacobian products for ``ift``, unrolled steps for ``phantom``), and with it, for
    ``ift``, ``adjoint_rel_residual``: the adjoint solve's mean relative residual (nan for the other modes and
    before a backward; an adjoint that does not converge gives a gradient that is not the implicit one).

    For explicit and tied blocks the residual is that of the last layer, ``||z_L - z_{L-1}||``, which
    tells whether the unrolled iteration has settled; for DEQ it is the solver's residual.

    An unrolled forward leaves its residuals on the device (``abs_trace``/``rel_trace`` as 1-D tensors and the
    residuals as 0-dim tensors) so that a training step never waits for the host; ``resolve()`` reads them into
    floats in one transfer (``as_dict`` and the engine's summaries call it at their log intervals).

    ``jacobian_loss`` is the Hutchinson estimate of ``||df/dz||_F^2 / numel`` (a tensor with graph, to
    be weighted and added to the loss) when the block was asked for it, else None. Its vector-Jacobian products
    (``jacobian_samples`` through the map at z*, and their double backward) are in neither NFE count: a run's step
    time measures them.
    """

    mode: str
    depth: int
    nfe_forward: int = 0
    nfe_backward: int = 0
    abs_trace: list[float] = field(default_factory=list)
    rel_trace: list[float] = field(default_factory=list)
    abs_residual: float = float("nan")
    rel_residual: float = float("nan")
    converged: float = float("nan")
    adjoint_rel_residual: float = float("nan")
    sparsity: float = 0.0
    jacobian_loss: Optional[torch.Tensor] = None

    def resolve(self) -> "BlockStats":
        """Residuals still on the device read into Python floats (one host transfer); returns self."""
        if isinstance(self.abs_trace, torch.Tensor):
            abs_trace, rel_trace = torch.stack([self.abs_trace, self.rel_trace]).tolist()
            self.abs_trace, self.rel_trace = abs_trace, rel_trace
            self.abs_residual, self.rel_residual = abs_trace[-1], rel_trace[-1]
        return self

    def as_dict(self) -> dict[str, float]:
        """Scalars under the ``core/`` keys the engine logs."""
        self.resolve()
        out = {
            "core/nfe_forward": float(self.nfe_forward),
            "core/nfe_backward": float(self.nfe_backward),
            "core/abs_residual": float(self.abs_residual),
            "core/rel_residual": float(self.rel_residual),
            "core/converged": float(self.converged),
            "core/adjoint_rel_residual": float(self.adjoint_rel_residual),
            "core/sparsity": float(self.sparsity),
        }
        if self.jacobian_loss is not None:
            out["core/jacobian_loss"] = float(self.jacobian_loss.detach())
        return out


def residuals(fz: torch.Tensor, z: torch.Tensor, eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample absolute and relative residual of a fixed-point iterate.

    Shapes: fz, z: (B, ...) -> abs, rel: (B,)
    """
    diff = (fz - z).flatten(1).norm(dim=1)
    return diff, diff / (fz.flatten(1).norm(dim=1) + eps)
