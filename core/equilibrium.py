"""Equilibrium health: is a DEQ at its fixed point, and is its gradient the one it claims to be?

Four measurements, each cheap enough for evaluation or an occasional probe batch:

- ``residual_metrics``: the mean relative residual ||f(z) - z|| / ||f(z)|| and the fraction of systems
  (samples, or positions and nodes where the solver solves per position) whose own relative residual is within
  a threshold (the converged fraction);
- ``spectral_norm_at``: a power-iteration estimate of ||df/dz||_2 at z, per sample (> 1 means the map
  is not a contraction there, and the fixed point may be unstable or absent);
- ``gradient_cosine``: the cosine between two parameter gradients (the budgeted one and a
  tight-tolerance one);
- ``equilibrium_flags``: the reasons, against ``EquilibriumThresholds``, why a run is not at
  equilibrium (an empty list: it is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Mapping, Optional, Sequence

import torch

from .stats import residuals

Map = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EquilibriumThresholds:
    """When a run counts as at equilibrium; a field set to None is not checked.

    Attributes:
        rel_residual: a sample is converged when its relative residual is <= this; the run is flagged
            when the mean relative residual is above it (so a few far-off samples flag it even when
            the converged fraction passes).
        converged_fraction: the run is flagged when fewer samples than this are converged.
        grad_cosine: the run is flagged when its gradient's cosine with the gradient its backward mode gives
            after a tight-tolerance solve (and, for IFT, a tight adjoint solve) is below this: the budget is
            too small for the gradient the run means to take (the engine compares the DEQ blocks' parameters).
            (How far phantom and one-step gradients are from the implicit one is an approximation by design; the
            engine records it apart, unjudged.)
        spectral_norm: the run is flagged when the estimated ||df/dz||_2 at z* is above this
            (default None: not checked; 1.0 asks for a contraction at z*).
    """

    rel_residual: Optional[float] = 1e-2
    converged_fraction: Optional[float] = 0.9
    grad_cosine: Optional[float] = 0.95
    spectral_norm: Optional[float] = None

    def __post_init__(self) -> None:
        checks = {
            "rel_residual": (lambda v: 0.0 < v < math.inf, "a finite number > 0"),
            "converged_fraction": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            "grad_cosine": (lambda v: -1.0 <= v <= 1.0, "in [-1, 1]"),
            "spectral_norm": (lambda v: 0.0 < v < math.inf, "a finite number > 0"),
        }
        for name, (ok, what) in checks.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
                raise ValueError(f"equilibrium threshold {name}={value!r} must be {what}, or None (not checked)")


METRIC_KEYS = tuple(f.name for f in fields(EquilibriumThresholds))


def residual_metrics(fz: torch.Tensor, z: torch.Tensor, rel_residual: float = 1e-2,
                     sample_dims: int = 1) -> dict[str, float]:
    """The mean relative residual and the fraction of systems whose relative residual is <= ``rel_residual``.

    A system is what the solver solves for on its own: the first ``sample_dims`` dimensions index systems, as the
    solvers' option of that name does (1: one per sample; 2: one per position of a sequence, or per node of a
    graph), so one far-off position is not averaged away in its sequence's norm. Pass the thresholds'
    ``rel_residual`` so the converged fraction is measured against the level ``equilibrium_flags`` judges (a
    solver's own ``converged`` counts against its tol instead).

    Shapes: fz, z: (B, ...), one system per index of the first ``sample_dims`` dims -> {"rel_residual",
    "converged_fraction"}
    """
    if fz.shape != z.shape:
        raise ValueError(f"f(z) has shape {tuple(fz.shape)} but z has {tuple(z.shape)}; they must match")
    if isinstance(sample_dims, bool) or not isinstance(sample_dims, int) or not 1 <= sample_dims <= z.dim():
        raise ValueError(f"sample_dims={sample_dims!r} must be an integer in [1, {z.dim()}] (the state's dims)")
    systems = (-1, *z.shape[sample_dims:]) if sample_dims < z.dim() else (-1, 1)
    _, rel = residuals(fz.detach().reshape(systems), z.detach().reshape(systems))
    return {"rel_residual": rel.mean().item(), "converged_fraction": (rel <= rel_residual).float().mean().item()}


def spectral_norm_at(
    f: Map, z: torch.Tensor, iters: int = 20, generator: Optional[torch.Generator] = None,
    step: float = 1e-3,
) -> torch.Tensor:
    """Per-sample estimate of the spectral norm of J = df/dz at ``z`` by power iteration on J^T J.

    Each step maps u -> J^T J u and renormalises u per sample: J u by a central difference,
    (f(z + h u) - f(z - h u)) / 2h with h = ``step`` * (1 + ||z||) per sample, then J^T (J u) by one
    vector-Jacobian product. No double backward is needed, so any cell works (fused attention kernels have
    none); the difference is exact for a linear map and otherwise off by O(h^2) (about 1e-6 relative). The
    estimate is ||J u|| for the final unit u, a lower bound that rises to sigma_max as ``iters`` grows (fast
    when the top two singular values are well apart). Per sample means per leading index of ``z``: exact
    when ``f`` acts on each sample independently (as the solvers' systems do); for a map that mixes samples
    it is the norm of each sample's rows restricted to its own block. Take ``.max()`` for the worst case.

    Safe under ``torch.no_grad``: grad is enabled locally on a detached copy of ``z``, only ``z`` is
    differentiated (no parameter's ``.grad`` is touched) and the result has no graph. ``generator`` seeds
    the start vector (it must live on ``z``'s device).

    Shapes: z: (B, ...) -> (B,)
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters={iters!r} must be an integer >= 1")
    if not step > 0:
        raise ValueError(f"step={step!r} must be > 0")
    if z.dim() < 1 or z.shape[0] == 0:
        raise ValueError(f"z of shape {tuple(z.shape)} has no samples; it must be (B, ...) with B >= 1")
    z = z.detach()
    shape = (-1, *([1] * (z.dim() - 1)))
    h = (step * (1.0 + z.flatten(1).norm(dim=1))).view(shape)
    with torch.enable_grad():
        z0 = z.clone().requires_grad_()
        fz = f(z0)
        if fz.shape != z.shape:
            raise ValueError(f"f(z) has shape {tuple(fz.shape)} but z has {tuple(z.shape)}; f must keep the shape")
        if not fz.requires_grad:  # f does not depend on z (or on anything differentiable): J = 0
            return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

        def jvp(u: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return (f(z + h * u) - f(z - h * u)) / (2 * h)

        def vjp(v: torch.Tensor) -> torch.Tensor:
            out = torch.autograd.grad(fz, z0, v, retain_graph=True, allow_unused=True)[0]
            return torch.zeros_like(z) if out is None else out

        u = _unit(torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device))
        for _ in range(iters - 1):
            u = _unit(vjp(jvp(u)), fallback=u)
        sigma = jvp(u).flatten(1).norm(dim=1)
    return sigma.detach()


def _unit(v: torch.Tensor, fallback: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``v`` scaled to unit norm per sample; a sample with zero norm keeps ``fallback`` (else stays 0).

    Shapes: v: (B, ...) -> (B, ...)
    """
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    unit = v / norm.clamp_min(torch.finfo(v.dtype).tiny)
    if fallback is None:
        return unit
    return torch.where(norm > 0, unit, fallback)


def gradient_cosine(a: Sequence[Optional[torch.Tensor]], b: Sequence[Optional[torch.Tensor]]) -> float:
    """Cosine between two gradients given as lists of per-parameter tensors, all flattened into one vector.

    ``a[i]`` and ``b[i]`` belong to the same parameter and must have the same shape. A None entry is a
    zero gradient (PyTorch leaves ``.grad`` None for a parameter the loss did not reach). Returns nan
    when either gradient is entirely zero (the cosine is undefined), which ``equilibrium_flags``
    reports; computed in float64.

    Shapes: a, b: lists of tensors, a[i].shape == b[i].shape -> float
    """
    if len(a) != len(b):
        raise ValueError(f"gradient lists have {len(a)} and {len(b)} entries; they must pair up per parameter")
    dot = norm_a = norm_b = 0.0
    for i, (ga, gb) in enumerate(zip(a, b)):
        if ga is not None and gb is not None and ga.shape != gb.shape:
            raise ValueError(f"gradient {i} has shapes {tuple(ga.shape)} and {tuple(gb.shape)}; they must match")
        va = None if ga is None else ga.detach().double().flatten()
        vb = None if gb is None else gb.detach().double().flatten()
        if va is not None:
            norm_a += va.dot(va).item()
        if vb is not None:
            norm_b += vb.dot(vb).item()
        if va is not None and vb is not None:
            dot += va.dot(vb.to(va.device)).item()
    if norm_a == 0.0 or norm_b == 0.0:
        return float("nan")
    return dot / math.sqrt(norm_a * norm_b)


def equilibrium_flags(
    metrics: Mapping[str, object], thresholds: EquilibriumThresholds = EquilibriumThresholds(),
) -> list[str]:
    """Why a run is not at equilibrium: one human-readable reason per failed check; [] means it is.

    ``metrics`` may hold ``rel_residual`` (mean relative residual at evaluation), ``converged_fraction``
    (fraction of samples with relative residual <= ``thresholds.rel_residual``, see
    ``residual_metrics``), ``grad_cosine`` (``gradient_cosine`` of the budgeted and a tight-tolerance
    gradient) and ``spectral_norm`` (the largest ``spectral_norm_at`` estimate); values are numbers or
    one-element tensors, other keys are ignored. A check whose threshold is set but whose metric is
    missing is reported as "not measured", and a nan metric as undefined: neither certifies the run.

    Shapes: metrics: {name: scalar} -> list of str
    """
    rules = {  # name: (fails(value, threshold), comparison shown, what the number is)
        "rel_residual": (lambda v, t: v > t, ">", "mean relative residual ||f(z) - z|| / ||f(z)||"),
        "converged_fraction": (lambda v, t: v < t, "<",
                               f"fraction of systems (samples, or positions and nodes) with relative residual <= "
                               f"{thresholds.rel_residual:g}" if thresholds.rel_residual is not None
                               else "fraction of converged systems"),
        "grad_cosine": (lambda v, t: v < t, "<", "cosine of the run's gradient with its backward mode after a tight-tolerance solve"),
        "spectral_norm": (lambda v, t: v > t, ">", "estimated ||df/dz||_2 at z*"),
    }
    reasons = []
    for name in METRIC_KEYS:
        threshold = getattr(thresholds, name)
        if threshold is None:
            continue
        fails, shown, what = rules[name]
        if name not in metrics or metrics[name] is None:
            reasons.append(f"{name} not measured ({what}; threshold {threshold:g})")
            continue
        value = _scalar(name, metrics[name])
        if math.isnan(value):
            reasons.append(f"{name} is nan ({what}: undefined; threshold {threshold:g})")
        elif fails(value, threshold):
            reasons.append(f"{name} {value:.3g} {shown} {threshold:g} ({what})")
    return reasons


def _scalar(name: str, value: object) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name} is a tensor of shape {tuple(value.shape)}; pass one number "
                             "(e.g. the max of per-sample spectral norms)")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric {name}={value!r} must be a number or a one-element tensor")
    return float(value)
