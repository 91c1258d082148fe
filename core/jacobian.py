"""Hutchinson estimate of the Jacobian's Frobenius norm, the DEQ stability penalty."""

from __future__ import annotations

import torch


def jacobian_frobenius(f0: torch.Tensor, z0: torch.Tensor, samples: int = 1) -> torch.Tensor:
    """Unbiased estimate of ||df/dz||_F^2 / numel(z), differentiable (create_graph).

    ``f0`` must be f(z0) built with ``z0.requires_grad``. Uses E_v ||v^T J||^2 = ||J||_F^2 for v ~ N(0, I).

    Shapes: f0, z0: (B, ...) -> scalar
    """
    if samples < 1:
        raise ValueError(f"jacobian samples={samples} must be >= 1")
    total = f0.new_zeros(())
    for _ in range(samples):
        v = torch.randn_like(f0)
        vjp = torch.autograd.grad(f0, z0, v, create_graph=True, retain_graph=True)[0]
        total = total + vjp.pow(2).sum() / v.numel()
    return total / samples
